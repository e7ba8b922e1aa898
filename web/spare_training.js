/**
 * ComfyUI front-end extension "spare.training": shows the progress and the
 * loss curve of a running "Train SPARE Adapter" node (`SPARE_TrainAdapter`)
 * on the node itself, and refreshes the LoRA lists once the LoRA is written.
 *
 * Thin glue only: the message format, the state and the drawing live in
 * `spare_training_core.js` (see the message format documented there).
 * ComfyUI serves this folder at `/extensions/<pack>/`, so `../../scripts/`
 * resolves to the front end's own `app.js` and `api.js`.
 */
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  EVENTS,
  NODE_TYPE,
  PACK_PREFIX,
  createTracker,
  drawLossCurve,
  prepareSettingsWidgets,
  readout,
} from "./spare_training_core.js";

const WIDGET_NAME = "spare_training";
const CANVAS_WIDTH = 280;
const CANVAS_HEIGHT = 90;
const READOUT_HEIGHT = 18;
const PANEL_HEIGHT = READOUT_HEIGHT + CANVAS_HEIGHT + 4;

const tracker = createTracker();
/** @type {Set<{node: any, update: () => void}>} the views of live nodes */
const views = new Set();

/** The node's state, or null while nothing arrived for its id. */
function stateOf(node) {
  return node && tracker.has(node.id) ? tracker.get(node.id) : null;
}

/** A DOM widget with a readout line and a canvas; returns its update function. */
function addDomView(node) {
  const root = document.createElement("div");
  root.className = "spare-training";
  root.style.cssText = "display:flex;flex-direction:column;gap:4px;font:12px sans-serif;color:#ccc;";
  const line = document.createElement("div");
  line.className = "spare-readout";
  const canvas = document.createElement("canvas");
  canvas.className = "spare-loss-curve";
  canvas.width = CANVAS_WIDTH;
  canvas.height = CANVAS_HEIGHT;
  canvas.style.cssText = `width:100%;height:${CANVAS_HEIGHT}px;`;
  root.appendChild(line);
  root.appendChild(canvas);
  node.addDOMWidget(WIDGET_NAME, WIDGET_NAME, root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => PANEL_HEIGHT,
  });
  return () => {
    const state = stateOf(node);
    line.textContent = readout(state);
    root.title = state ? state.message : "";
    const ctx = canvas.getContext("2d");
    if (ctx) drawLossCurve(ctx, state ? state.losses : [], canvas.width, canvas.height);
  };
}

/** Fallback for front ends without addDOMWidget: draws in onDrawForeground. */
function addCanvasView(node) {
  if (node.size && node.size.length >= 2) node.size[1] += PANEL_HEIGHT;
  const previous = node.onDrawForeground;
  node.onDrawForeground = function (ctx, ...rest) {
    const result = previous ? previous.call(this, ctx, ...rest) : undefined;
    if (this.flags && this.flags.collapsed) return result;
    const state = stateOf(this);
    ctx.save();
    ctx.translate(8, this.size[1] - PANEL_HEIGHT);
    ctx.fillStyle = "#cccccc";
    ctx.font = "12px sans-serif";
    ctx.textBaseline = "top";
    ctx.fillText(readout(state), 0, 2);
    ctx.translate(0, READOUT_HEIGHT);
    drawLossCurve(ctx, state ? state.losses : [], Math.max(0, this.size[0] - 16), CANVAS_HEIGHT);
    ctx.restore();
    return result;
  };
  return () => {}; // redrawn with the canvas (setDirtyCanvas)
}

function attach(node) {
  const update = typeof node.addDOMWidget === "function" ? addDomView(node) : addCanvasView(node);
  const view = { node, update };
  views.add(view);
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    views.delete(view);
    return onRemoved ? onRemoved.apply(this, args) : undefined;
  };
  update();
}

function refreshLoraLists() {
  if (typeof app.refreshComboInNodes !== "function") return;
  const warn = (err) => console.warn("spare.training: refreshing the LoRA lists failed", err);
  try {
    Promise.resolve(app.refreshComboInNodes()).catch(warn);
  } catch (err) {
    warn(err);
  }
}

function onMessage(type, event) {
  const state = tracker.ingest(type, event && event.detail);
  if (!state) return;
  for (const view of views) {
    // node.id is read now, not at creation: nodes get their id after nodeCreated
    if (String(view.node.id) !== state.nodeId) continue;
    try {
      view.update();
    } catch (err) {
      console.warn("spare.training: updating the view failed", err);
    }
  }
  if (type === EVENTS.done) refreshLoraLists();
  if (app.graph && typeof app.graph.setDirtyCanvas === "function") app.graph.setDirtyCanvas(true);
}

let listening = false;

app.registerExtension({
  name: "spare.training",
  async setup() {
    if (listening) return;
    listening = true;
    for (const type of Object.values(EVENTS)) {
      api.addEventListener(type, (event) => onMessage(type, event));
    }
  },
  async nodeCreated(node) {
    const type = node.comfyClass ?? node.type;
    // Runs before a saved workflow's values are restored, so loaded workflows keep theirs.
    if (typeof type === "string" && type.startsWith(PACK_PREFIX)) prepareSettingsWidgets(node.widgets);
    if (type === NODE_TYPE) attach(node);
  },
});
