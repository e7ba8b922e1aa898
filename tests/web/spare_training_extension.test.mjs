// Tests of web/spare_training.js and of the harness, in Node with a fake DOM.
// The files are copied into a temp folder laid out as the browser check
// serves them (ComfyUI's URLs), so "../../scripts/app.js" reaches the
// stand-ins exactly as in the browser.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { pathToFileURL } from "node:url";

import { REPO_ROOT, ROUTES } from "./browser_check.mjs";
import { fakeDocument, recordingContext, strokedPaths } from "./fakes.mjs";
import { EXPECTED_READOUT, NODE_ID, TRAIN_LOSSES } from "./stand_ins/messages.js";
import { CURVE_STYLE } from "../../web/spare_training_core.js";

let tmp;
let app;
let api;
let harness;
let doc;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "spare-web-layout-"));
  for (const [urlPath, repoPath] of ROUTES) {
    fs.cpSync(path.join(REPO_ROOT, repoPath), path.join(tmp, urlPath), { recursive: true });
  }
  doc = fakeDocument();
  globalThis.document = doc;
  const load = (urlPath) => import(pathToFileURL(path.join(tmp, urlPath)).href);
  harness = await load("/tests/web/harness.js"); // imports the extension
  ({ app } = await load("/scripts/app.js"));
  ({ api } = await load("/scripts/api.js"));
});

after(() => {
  delete globalThis.document;
  fs.rmSync(tmp, { recursive: true, force: true });
});

const fakeNode = (type, extra = {}) => ({ id: -1, type, comfyClass: type, size: [300, 80], ...extra });

test("the extension registers once, as spare.training", () => {
  assert.deepEqual(app.extensions.map((e) => e.name), ["spare.training"]);
  const extension = app.extensions[0];
  assert.equal(typeof extension.setup, "function");
  assert.equal(typeof extension.nodeCreated, "function");
});

test("the harness: fake messages and a fake node give the expected readout and a drawn canvas", async () => {
  const result = await harness.runHarness(doc);
  assert.equal(result.readout, EXPECTED_READOUT);
  assert.equal(result.blank, false);
  assert.equal(doc.body.getAttribute("data-harness"), "done");
  assert.equal(doc.body.getAttribute("data-readout"), EXPECTED_READOUT);
  assert.equal(doc.body.getAttribute("data-canvas-blank"), "false");

  const [widget] = result.node.widgets;
  assert.equal(widget.options.serialize, false);
  assert.ok(widget.options.getMinHeight() > 90);
  assert.equal(widget.element.parentNode, doc.getElementById("node"));
  const canvas = widget.element.querySelector("canvas");
  const curves = strokedPaths(canvas.context.calls).filter((p) => p.strokeStyle === CURVE_STYLE.line);
  assert.equal(curves.at(-1).points.length, TRAIN_LOSSES.length);
  // the other node's done message refreshed the LoRA lists once; each used message redrew
  assert.equal(app.refreshCount, 1);
  assert.ok(app.graph.dirtyCount >= TRAIN_LOSSES.length);
  assert.equal(harness.canvasIsBlank({ width: 4, height: 4, getContext: () => recordingContext(4, 4) }), true);
});

test("done and error messages for the node update its readout; done refreshes the LoRA lists", async () => {
  const node = harness.makeFakeNode("SPARE_TrainAdapter", doc.getElementById("node"));
  await app.extensions[0].nodeCreated(node);
  node.id = 21;
  const line = node.widgets[0].element.querySelector(".spare-readout");
  assert.equal(line.textContent, "idle");

  const refreshes = app.refreshCount;
  const dirty = app.graph.dirtyCount;
  api.emit("spare.progress", { node: "21", stage: "train", step: 3, total: 4, loss: 0.5, message: "" });
  assert.equal(line.textContent, "train 3/4 · loss 0.5");
  assert.equal(app.graph.dirtyCount, dirty + 1);
  api.emit("spare.done", { node: "21", lora_path: "/m/loras/spare/red.safetensors", lora_name: "spare/red.safetensors" });
  assert.equal(line.textContent, "done: spare/red.safetensors");
  assert.equal(app.refreshCount, refreshes + 1);
  api.emit("spare.error", { node: "21", message: "CUDA out of memory" });
  assert.equal(line.textContent, "error: CUDA out of memory");
  assert.equal(app.refreshCount, refreshes + 1);

  // messages of other nodes, and malformed ones, leave it alone
  api.emit("spare.progress", { node: "22", stage: "data", step: 1, total: 2 });
  api.emit("spare.progress", null);
  api.emit("spare.done", "not an object");
  assert.equal(line.textContent, "error: CUDA out of memory");

  // a removed node is no longer updated
  node.onRemoved();
  api.emit("spare.progress", { node: "21", stage: "data", step: 1, total: 2 });
  assert.equal(line.textContent, "error: CUDA out of memory");
});

test("a node created after its messages arrived shows them at once", async () => {
  api.emit("spare.progress", { node: "30", stage: "saliency", step: 5, total: 64, loss: null, message: "" });
  const node = harness.makeFakeNode("SPARE_TrainAdapter", doc.getElementById("node"));
  node.id = 30;
  await app.extensions[0].nodeCreated(node);
  assert.equal(node.widgets[0].element.querySelector(".spare-readout").textContent, "saliency 5/64");
});

test("without addDOMWidget the node draws the readout and curve in onDrawForeground", async () => {
  let previousCalls = 0;
  const node = fakeNode("SPARE_TrainAdapter", { onDrawForeground() { previousCalls += 1; } });
  await app.extensions[0].nodeCreated(node);
  assert.ok(node.size[1] > 80, "the node grew to make room for the panel");
  node.id = 40;
  const losses = [0.4, 0.3, 0.35, 0.1];
  losses.forEach((loss, i) => api.emit("spare.progress", { node: "40", stage: "train", step: i + 1, total: 10, loss, message: "" }));

  const ctx = recordingContext(400, 400);
  node.onDrawForeground(ctx);
  assert.equal(previousCalls, 1);
  assert.ok(ctx.calls.some((c) => c.name === "fillText" && c.args[0] === "train 4/10 · loss 0.1"));
  const curves = strokedPaths(ctx.calls).filter((p) => p.strokeStyle === CURVE_STYLE.line);
  assert.equal(curves.length, 1);
  assert.equal(curves[0].points.length, losses.length);
  assert.equal(ctx.depth, 0, "save/restore balanced");

  node.flags = { collapsed: true };
  const collapsed = recordingContext(10, 10);
  node.onDrawForeground(collapsed);
  assert.equal(collapsed.calls.length, 0);
});

test("nodes of other types get nothing; a missing refreshComboInNodes is tolerated", async () => {
  const node = fakeNode("KSampler", { addDOMWidget() { throw new Error("must not be called"); } });
  await app.extensions[0].nodeCreated(node);
  assert.equal(node.onDrawForeground, undefined);
  assert.equal(node.onRemoved, undefined);

  const refresh = app.refreshComboInNodes;
  delete app.refreshComboInNodes;
  try {
    assert.doesNotThrow(() => api.emit("spare.done", { node: NODE_ID, lora_path: "/a", lora_name: "a" }));
  } finally {
    app.refreshComboInNodes = refresh;
  }
});
