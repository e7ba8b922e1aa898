/**
 * The harness: loads the spare.training extension against the stand-in
 * app/api (served at ComfyUI's URLs /scripts/app.js and /scripts/api.js),
 * feeds it the stand-in messages, creates a fake SPARE_TrainAdapter node and
 * publishes the result on <body>:
 *   data-harness="done" | "error", data-readout="<readout text>",
 *   data-canvas-blank="true" | "false", data-error="<message>".
 * It takes the document as a parameter so that the Node tests can run it
 * with a fake DOM.
 */
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import "../../extensions/spare/spare_training.js";
import { MESSAGES_AFTER_NODE, MESSAGES_BEFORE_NODE, NODE_ID } from "./stand_ins/messages.js";

/** A fake LiteGraph node: the id arrives after nodeCreated, as in ComfyUI. */
export function makeFakeNode(type, container) {
  return {
    id: -1,
    type,
    comfyClass: type,
    size: [300, 80],
    widgets: [],
    addDOMWidget(name, widgetType, element, options) {
      const widget = { name, type: widgetType, element, options };
      this.widgets.push(widget);
      container.appendChild(element);
      return widget;
    },
  };
}

/** True when every pixel of the canvas has the colour of its top-left pixel. */
export function canvasIsBlank(canvas) {
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  for (let i = 4; i < data.length; i += 4) {
    if (data[i] !== data[0] || data[i + 1] !== data[1] || data[i + 2] !== data[2] || data[i + 3] !== data[3]) {
      return false;
    }
  }
  return true;
}

/** Runs the whole sequence on `doc`; returns what it published. */
export async function runHarness(doc) {
  const extension = app.extension("spare.training");
  if (!extension) throw new Error("the extension spare.training was not registered");
  await extension.setup();
  for (const [type, detail] of MESSAGES_BEFORE_NODE) api.emit(type, detail);

  const node = makeFakeNode("SPARE_TrainAdapter", doc.getElementById("node"));
  await extension.nodeCreated(node);
  node.id = Number(NODE_ID);
  for (const [type, detail] of MESSAGES_AFTER_NODE) api.emit(type, detail);

  const element = node.widgets.length ? node.widgets[0].element : null;
  if (!element) throw new Error("nodeCreated added no DOM widget");
  const readout = element.querySelector(".spare-readout").textContent;
  const blank = canvasIsBlank(element.querySelector("canvas"));
  doc.body.setAttribute("data-readout", readout);
  doc.body.setAttribute("data-canvas-blank", String(blank));
  doc.body.setAttribute("data-harness", "done");
  return { node, readout, blank };
}
