// Tests of web/spare_training_core.js (run: node --test tests/web/).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CURVE_STYLE,
  EVENTS,
  STAGES,
  TrainingState,
  createTracker,
  drawLossCurve,
  formatLoss,
  lossCurvePoints,
  prepareSettingsWidgets,
  readout,
} from "../../web/spare_training_core.js";
import { recordingContext, strokedPaths } from "./fakes.mjs";
import {
  EXPECTED_READOUT,
  MESSAGES_AFTER_NODE,
  MESSAGES_BEFORE_NODE,
  NODE_ID,
  TRAIN_LOSSES,
} from "./stand_ins/messages.js";

const progress = (node, stage, step, total, loss = null, message = "") => ({ node, stage, step, total, loss, message });

function noNaN(points) {
  for (const p of points) {
    assert.ok(Number.isFinite(p.x) && Number.isFinite(p.y), `not finite: ${JSON.stringify(p)}`);
  }
}

test("the core module imports without a DOM", () => {
  assert.equal(typeof globalThis.document, "undefined");
  assert.deepEqual(STAGES, ["data", "profile", "saliency", "train", "preview"]);
  assert.deepEqual(Object.values(EVENTS), ["spare.progress", "spare.done", "spare.error"]);
});

test("messages of another node are ignored", () => {
  const state = new TrainingState("7");
  assert.equal(state.ingest(EVENTS.progress, progress("9", "train", 5, 10, 0.5)), false);
  assert.equal(state.ingest(EVENTS.done, { node: "9", lora_path: "/a.safetensors", lora_name: "a.safetensors" }), false);
  assert.equal(state.ingest(EVENTS.error, { node: "9", message: "boom" }), false);
  assert.equal(state.ingest(EVENTS.progress, progress(undefined, "train", 1, 2, 0.1)), false);
  assert.equal(state.status, "idle");
  assert.deepEqual(state.losses, []);
  assert.equal(readout(state), "idle");

  // a numeric id matches its string form
  assert.equal(state.ingest(EVENTS.progress, progress(7, "data", 1, 2)), true);
  assert.equal(readout(state), "data 1/2");
});

test("readout after data, profile, saliency and train messages", () => {
  const state = new TrainingState(NODE_ID);
  const seen = [];
  for (const [type, detail] of [...MESSAGES_BEFORE_NODE, ...MESSAGES_AFTER_NODE]) {
    if (state.ingest(type, detail)) seen.push(readout(state));
  }
  assert.deepEqual(seen.slice(0, 4), ["data 16/70", "data 70/70", "profile 10/10", "saliency 64/64"]);
  assert.equal(seen[4], "train 1/120 · loss 0.31");
  assert.equal(readout(state), EXPECTED_READOUT);
  assert.equal(readout(state), "train 12/120 · loss 0.0123");
  assert.deepEqual(state.losses, TRAIN_LOSSES);
  assert.deepEqual(state.stages, {
    data: { step: 70, total: 70 },
    profile: { step: 10, total: 10 },
    saliency: { step: 64, total: 64 },
    train: { step: 12, total: 120 },
  });
  assert.equal(state.message, "6 modules chosen");
  assert.equal(state.status, "running");
});

test("readout of stages without a total or a loss", () => {
  const state = new TrainingState("1");
  state.ingest(EVENTS.progress, progress("1", "preview", 2, 0));
  assert.equal(readout(state), "preview 2");
  state.ingest(EVENTS.progress, progress("1", "train", 3, 50, null));
  assert.equal(readout(state), "train 3/50");
  state.ingest(EVENTS.progress, progress("1", "train", 4, 50, Number.NaN));
  assert.equal(readout(state), "train 4/50");
  assert.deepEqual(state.losses, []);
  state.ingest(EVENTS.progress, progress("1", "train", 5, 50, 0.25));
  assert.equal(readout(state), "train 5/50 · loss 0.25");
  assert.equal(readout(null), "idle");
  // a progress message without a stage is not used
  assert.equal(state.ingest(EVENTS.progress, { node: "1", step: 1 }), false);
});

test("done, error and cancel messages change the readout", () => {
  const state = new TrainingState("3");
  state.ingest(EVENTS.progress, progress("3", "train", 120, 120, 0.01));
  assert.equal(state.ingest(EVENTS.done, {
    node: "3", lora_path: "/comfy/models/loras/spare/red.safetensors", lora_name: "spare/red.safetensors",
  }), true);
  assert.equal(readout(state), "done: spare/red.safetensors");
  assert.equal(state.loraPath, "/comfy/models/loras/spare/red.safetensors");

  const noName = new TrainingState("4");
  noName.ingest(EVENTS.done, { node: "4", lora_path: "/tmp/x.safetensors" });
  assert.equal(readout(noName), "done: /tmp/x.safetensors");

  const failed = new TrainingState("5");
  failed.ingest(EVENTS.progress, progress("5", "saliency", 3, 64));
  failed.ingest(EVENTS.error, { node: "5", message: "CUDA out of memory" });
  assert.equal(readout(failed), "error: CUDA out of memory");
  assert.equal(failed.status, "error");

  const cancelled = new TrainingState("6");
  cancelled.ingest(EVENTS.error, { node: "6", message: "interrupted", cancelled: true });
  assert.equal(readout(cancelled), "cancelled: interrupted");
  cancelled.ingest(EVENTS.error, { node: "6", cancelled: true });
  assert.equal(readout(cancelled), "cancelled");
});

test("a new run (after done, a data stage again, a train step going back) starts afresh", () => {
  const state = new TrainingState("8");
  state.ingest(EVENTS.progress, progress("8", "train", 1, 3, 0.5));
  state.ingest(EVENTS.progress, progress("8", "train", 2, 3, 0.4));
  state.ingest(EVENTS.done, { node: "8", lora_path: "/a", lora_name: "a" });
  state.ingest(EVENTS.progress, progress("8", "data", 1, 10));
  assert.equal(readout(state), "data 1/10");
  assert.deepEqual(state.losses, []);
  assert.deepEqual(Object.keys(state.stages), ["data"]);

  state.ingest(EVENTS.progress, progress("8", "train", 5, 9, 0.3));
  state.ingest(EVENTS.progress, progress("8", "train", 6, 9, 0.2));
  state.ingest(EVENTS.progress, progress("8", "train", 1, 9, 0.9));
  assert.deepEqual(state.losses, [0.9]);
  assert.equal(readout(state), "train 1/9 · loss 0.9");

  // a data message after a later stage: an earlier run ended without a message
  state.ingest(EVENTS.progress, progress("8", "data", 2, 10));
  assert.deepEqual(state.losses, []);
  assert.deepEqual(Object.keys(state.stages), ["data"]);
  // a preview between train steps keeps the run
  state.ingest(EVENTS.progress, progress("8", "train", 1, 9, 0.5));
  state.ingest(EVENTS.progress, progress("8", "preview", 1, 1));
  state.ingest(EVENTS.progress, progress("8", "train", 2, 9, 0.4));
  assert.deepEqual(state.losses, [0.5, 0.4]);
});

test("formatLoss keeps three significant digits", () => {
  assert.equal(formatLoss(0.0123), "0.0123");
  assert.equal(formatLoss(0.012345), "0.0123");
  assert.equal(formatLoss(1.5), "1.5");
  assert.equal(formatLoss(0.1), "0.1");
  assert.equal(formatLoss(123.456), "123");
  assert.equal(formatLoss(2.3456e-7), "2.35e-7");
  assert.equal(formatLoss(Number.NaN), "n/a");
});

test("lossCurvePoints maps min/max to bottom/top and spreads x evenly", () => {
  const losses = [0.5, 0.2, 1.0, 0.1, 0.3];
  const [width, height, padding] = [200, 100, 10];
  const points = lossCurvePoints(losses, width, height, padding);
  assert.equal(points.length, losses.length);
  noNaN(points);
  const byLoss = (v) => points.find((p) => p.loss === v);
  assert.equal(byLoss(1.0).y, padding); // max at the top of the plot area
  assert.equal(byLoss(0.1).y, height - padding); // min at the bottom
  for (const p of points) assert.ok(p.y >= padding && p.y <= height - padding);
  assert.deepEqual(points.map((p) => p.x), [10, 55, 100, 145, 190]);
  // linear in between: 0.5 is 4/9 of the way up
  assert.ok(Math.abs(byLoss(0.5).y - (90 - 80 * (0.4 / 0.9))) < 1e-9);
});

test("lossCurvePoints with a log scale", () => {
  const points = lossCurvePoints([100, 10, 1], 100, 100, 0, { log: true });
  assert.deepEqual(points.map((p) => p.y), [0, 50, 100]);
  const linear = lossCurvePoints([100, 10, 1], 100, 100, 0);
  assert.ok(Math.abs(linear[1].y - (100 - 100 * (9 / 99))) < 1e-9);
  // log drops losses <= 0 but keeps their x slot
  const withZero = lossCurvePoints([1, 0, 10], 100, 100, 0, { log: true });
  assert.deepEqual(withZero.map((p) => [p.index, p.x, p.y]), [[0, 0, 100], [2, 100, 0]]);
});

test("lossCurvePoints with 0, 1, equal, NaN and degenerate inputs", () => {
  assert.deepEqual(lossCurvePoints([], 100, 50), []);
  assert.deepEqual(lossCurvePoints(null, 100, 50), []);
  assert.deepEqual(lossCurvePoints([Number.NaN, Infinity], 100, 50), []);

  const one = lossCurvePoints([0.4], 100, 50, 10);
  assert.deepEqual(one.map((p) => [p.x, p.y]), [[50, 25]]);

  const flat = lossCurvePoints([0.2, 0.2, 0.2], 100, 50, 10);
  assert.deepEqual(flat.map((p) => [p.x, p.y]), [[10, 25], [50, 25], [90, 25]]);

  const holes = lossCurvePoints([0.3, Number.NaN, 0.1], 100, 50, 0);
  assert.deepEqual(holes.map((p) => [p.index, p.x, p.y]), [[0, 0, 0], [2, 100, 50]]);

  for (const [w, h, pad] of [[Number.NaN, 50, 8], [0, 0, 8], [10, 10, 100], [100, 50, Number.NaN], [-5, -5, -1]]) {
    const points = lossCurvePoints([3, 2, 1], w, h, pad);
    assert.equal(points.length, 3);
    noNaN(points);
  }
});

test("drawLossCurve draws background, axes and one path through every loss", () => {
  const losses = [0.9, 0.5, 0.6, 0.2, 0.1, 0.05];
  const ctx = recordingContext(240, 90);
  const drawn = drawLossCurve(ctx, losses, 240, 90);
  const names = ctx.calls.map((c) => c.name);

  assert.deepEqual(ctx.calls.find((c) => c.name === "fillRect").args, [0, 0, 240, 90]);
  assert.equal(names.filter((n) => n === "save").length, names.filter((n) => n === "restore").length);

  const paths = strokedPaths(ctx.calls);
  const axes = paths.filter((p) => p.strokeStyle === CURVE_STYLE.axis);
  assert.equal(axes.length, 1);
  assert.deepEqual(axes[0].points, [[8, 8], [8, 82], [232, 82]]);

  const curves = paths.filter((p) => p.strokeStyle === CURVE_STYLE.line);
  assert.equal(curves.length, 1);
  assert.equal(curves[0].points.length, losses.length);
  const expected = lossCurvePoints(losses, 240, 90, 8);
  assert.deepEqual(curves[0].points, expected.map((p) => [p.x, p.y]));
  assert.deepEqual(drawn, expected);
  // one moveTo then a lineTo per further point
  const curveStart = names.lastIndexOf("beginPath");
  assert.deepEqual(names.slice(curveStart + 1, curveStart + 1 + losses.length),
    ["moveTo", ...Array(losses.length - 1).fill("lineTo")]);
  // labels: max and min loss
  assert.deepEqual(ctx.calls.filter((c) => c.name === "fillText").map((c) => c.args[0]), ["0.9", "0.05"]);
});

test("drawLossCurve with no, one or NaN losses does not throw", () => {
  for (const losses of [[], null, undefined, [Number.NaN], [Number.NaN, Number.NaN]]) {
    const ctx = recordingContext(100, 50);
    assert.deepEqual(drawLossCurve(ctx, losses, 100, 50), []);
    assert.equal(strokedPaths(ctx.calls).filter((p) => p.strokeStyle === CURVE_STYLE.line).length, 0);
    assert.ok(ctx.calls.some((c) => c.name === "stroke")); // the axes still are drawn
  }
  const ctx = recordingContext(100, 50);
  const one = drawLossCurve(ctx, [0.3], 100, 50);
  assert.equal(one.length, 1);
  assert.equal(ctx.calls.filter((c) => c.name === "fillRect").length, 2); // background + dot

  const odd = recordingContext(10, 10);
  assert.doesNotThrow(() => drawLossCurve(odd, [1, Number.NaN, 2], Number.NaN, -3));
  for (const call of odd.calls) {
    for (const arg of call.args) if (typeof arg === "number") assert.ok(Number.isFinite(arg), call.name);
  }
});

test("createTracker keeps one state per node and routes messages", () => {
  const tracker = createTracker();
  assert.equal(tracker.ingest(EVENTS.progress, progress("1", "data", 1, 4)), tracker.get("1"));
  tracker.ingest(EVENTS.progress, progress("2", "train", 3, 9, 0.75));
  tracker.ingest(EVENTS.progress, progress("1", "data", 2, 4));
  assert.deepEqual(tracker.ids().sort(), ["1", "2"]);
  assert.equal(readout(tracker.get(1)), "data 2/4");
  assert.equal(readout(tracker.get("2")), "train 3/9 · loss 0.75");
  assert.equal(tracker.get("1"), tracker.get(1));

  assert.equal(tracker.ingest("spare.unknown", progress("3", "data", 1, 1)), null);
  assert.equal(tracker.ingest(EVENTS.progress, null), null);
  assert.equal(tracker.ingest(EVENTS.progress, { stage: "data" }), null);
  assert.equal(tracker.has("3"), false);

  assert.equal(tracker.delete("1"), true);
  assert.equal(tracker.has("1"), false);
  assert.equal(readout(tracker.get("1")), "idle");
});

test("settings widgets: advanced ones are folded and the seed control starts fixed", () => {
  const widgets = [
    { name: "steps", value: 120, options: {} },
    { name: "weight_decay", value: 0, options: { advanced: true } },
    { name: "seed", value: 0, options: {} },
    { name: "control_after_generate", value: "randomize", options: {} },
    { name: "sample_steps", value: 10, options: { advanced: true }, advanced: true },
  ];
  const changed = prepareSettingsWidgets(widgets);
  assert.deepEqual(changed, { advanced: ["weight_decay"], seedControl: true });
  assert.equal(widgets[1].advanced, true);
  assert.equal(widgets[0].advanced, undefined);
  assert.equal(widgets[3].value, "fixed");
  assert.deepEqual(prepareSettingsWidgets(widgets), { advanced: [], seedControl: false }); // idempotent
  assert.deepEqual(prepareSettingsWidgets(undefined), { advanced: [], seedControl: false });
});
