/**
 * SPARE training view: the plain logic behind the ComfyUI extension.
 *
 * This module has no DOM access at import time and imports nothing from
 * ComfyUI, so it runs unchanged in a browser and in Node (the tests). The thin
 * extension `spare_training.js` wires it to ComfyUI's `app` and `api`.
 *
 * ## Message format (Python -> page)
 *
 * While a "Train SPARE Adapter" node (node type `SPARE_TrainAdapter`) runs, the
 * Python side sends these messages with
 * `PromptServer.instance.send_sync(<type>, <data>)`. The page receives them as
 * `api.addEventListener(<type>, (event) => event.detail)`. Every payload is a
 * JSON object and carries `node`: the executing node's `unique_id` as a
 * string (the `UNIQUE_ID` hidden input; `io.Hidden.unique_id` in the V3
 * schema), which the page matches against `String(node.id)`. (A node inside a
 * subgraph runs under a compound id such as "12:5" and is not matched.)
 *
 * `spare.progress` - one per engine event:
 * ```
 * {
 *   node: string,       // unique_id of the SPARE_TrainAdapter node
 *   stage: "data" | "profile" | "saliency" | "train" | "preview",
 *   step: int,          // steps done in this stage, 0..total
 *   total: int,         // steps in this stage (0 when unknown)
 *   loss: float | null, // the training loss at this step (stage "train"),
 *                       // null otherwise; send null, never NaN/Infinity
 *                       // (JSON has no NaN: JSON.parse rejects it)
 *   message: string     // short human-readable note, may be ""
 * }
 * ```
 * `spare.done` - once, after the LoRA file was written:
 * ```
 * { node: string, lora_path: string, lora_name: string }
 * ```
 * `lora_path` is the absolute path of the file; `lora_name` the name as the
 * LoRA loaders list it (relative to the `loras` folder, e.g.
 * `"spare/red.safetensors"`). On this message the page refreshes the LoRA
 * lists of all nodes.
 *
 * `spare.error` - when the run failed or was cancelled:
 * ```
 * { node: string, message: string, cancelled?: boolean }
 * ```
 * `cancelled: true` marks a user interrupt rather than a failure.
 *
 * A `spare.progress` that arrives after `spare.done` or `spare.error` for the
 * same node starts a new run: the node's previous progress and loss history
 * are dropped. So does a `data` message after a later stage, and a `train`
 * step lower than the last one seen (a run that ended without a message).
 *
 * @module spare_training_core
 */

/** The ComfyUI node type whose runs are shown. */
export const NODE_TYPE = "SPARE_TrainAdapter";

/** The message types the Python side sends. */
export const EVENTS = Object.freeze({
  progress: "spare.progress",
  done: "spare.done",
  error: "spare.error",
});

/** The stages of one run, in the order they happen. */
export const STAGES = Object.freeze(["data", "profile", "saliency", "train", "preview"]);

/** Default colours of {@link drawLossCurve}. */
export const CURVE_STYLE = Object.freeze({
  background: "#1e1e1e",
  axis: "#777777",
  line: "#4fc3f7",
  text: "#bbbbbb",
});

/**
 * Progress of one stage.
 * @typedef {object} StageProgress
 * @property {number} step
 * @property {number} total
 */

/** @param {unknown} value @returns {number} a finite number, or 0 */
function finiteOr0(value) {
  const n = Number(value);
  return Number.isFinite(n) ? n : 0;
}

/** @param {unknown} value @returns {value is number} */
function isFiniteNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/**
 * Formats a loss with three significant digits and no trailing zeros
 * (`0.0123`, `1.5`, `2.35e-7`).
 * @param {number} loss
 * @returns {string}
 */
export function formatLoss(loss) {
  if (!isFiniteNumber(loss)) return "n/a";
  return String(Number(loss.toPrecision(3)));
}

/**
 * The training view of one node: ingests that node's messages and ignores
 * every other node's.
 */
export class TrainingState {
  /** @param {string|number} nodeId the node's id (compared as a string) */
  constructor(nodeId) {
    /** @type {string} */
    this.nodeId = String(nodeId);
    this.reset();
  }

  /** Forgets everything about the current run. */
  reset() {
    /** @type {"idle"|"running"|"done"|"error"|"cancelled"} */
    this.status = "idle";
    /** @type {string|null} the stage of the latest progress message */
    this.stage = null;
    /** @type {Record<string, StageProgress>} progress per stage seen */
    this.stages = {};
    /** @type {number[]} finite losses of the `train` stage, in order */
    this.losses = [];
    /** @type {number|null} the loss of the latest `train` message, if finite */
    this.lastLoss = null;
    /** @type {string} the latest non-empty message text */
    this.message = "";
    /** @type {string|null} */
    this.loraPath = null;
    /** @type {string|null} */
    this.loraName = null;
    /** @type {string|null} */
    this.error = null;
  }

  /**
   * Takes in one message.
   * @param {string} type one of {@link EVENTS}
   * @param {any} detail the message payload (`event.detail`)
   * @returns {boolean} whether the message was for this node and was used
   */
  ingest(type, detail) {
    if (!detail || typeof detail !== "object") return false;
    if (detail.node === undefined || detail.node === null) return false;
    if (String(detail.node) !== this.nodeId) return false;
    if (type === EVENTS.progress) return this.#progress(detail);
    if (type === EVENTS.done) {
      this.status = "done";
      this.loraPath = typeof detail.lora_path === "string" ? detail.lora_path : null;
      this.loraName = typeof detail.lora_name === "string" ? detail.lora_name : null;
      return true;
    }
    if (type === EVENTS.error) {
      this.status = detail.cancelled === true ? "cancelled" : "error";
      this.error = detail.message === undefined || detail.message === null
        ? "" : String(detail.message);
      return true;
    }
    return false;
  }

  #progress(detail) {
    const stage = typeof detail.stage === "string" && detail.stage ? detail.stage : null;
    if (stage === null) return false;
    const step = finiteOr0(detail.step);
    const total = finiteOr0(detail.total);
    const lastTrain = this.stages.train;
    const restarted = this.status === "done" || this.status === "error"
      || this.status === "cancelled"
      || (stage === "data" && this.stage !== null && this.stage !== "data")
      || (stage === "train" && lastTrain !== undefined && step < lastTrain.step);
    if (restarted) this.reset();
    this.status = "running";
    this.stage = stage;
    this.stages[stage] = { step, total };
    if (stage === "train") {
      this.lastLoss = isFiniteNumber(detail.loss) ? detail.loss : null;
      if (this.lastLoss !== null) this.losses.push(this.lastLoss);
    }
    if (typeof detail.message === "string" && detail.message) this.message = detail.message;
    return true;
  }
}

/**
 * The one-line text shown on the node, e.g. `"train 37/120 · loss 0.0123"`,
 * `"data 16/70"`, `"done: spare/red.safetensors"`, `"error: out of memory"`,
 * `"idle"`.
 * @param {TrainingState|null|undefined} state
 * @returns {string}
 */
export function readout(state) {
  if (!state) return "idle";
  switch (state.status) {
    case "done":
      return `done: ${state.loraName || state.loraPath || "LoRA written"}`;
    case "error":
      return `error: ${state.error || "unknown error"}`;
    case "cancelled":
      return state.error ? `cancelled: ${state.error}` : "cancelled";
    case "running": {
      const progress = state.stages[state.stage] || { step: 0, total: 0 };
      let text = progress.total > 0
        ? `${state.stage} ${progress.step}/${progress.total}`
        : `${state.stage} ${progress.step}`;
      if (state.stage === "train" && state.lastLoss !== null) {
        text += ` · loss ${formatLoss(state.lastLoss)}`;
      }
      return text;
    }
    default:
      return "idle";
  }
}

/**
 * Maps a loss history to canvas coordinates inside the plot area
 * `[padding, width - padding] x [padding, height - padding]`.
 *
 * The largest loss lands on the top edge (`y = padding`), the smallest on the
 * bottom edge (`y = height - padding`); x spreads evenly by index from the left
 * edge to the right edge. One point (or all losses equal) sits at mid-height; a
 * single point also sits at mid-width. Non-finite losses (and, with `log`,
 * losses <= 0) are skipped but keep their slot on the x axis. Never returns NaN.
 *
 * @param {ArrayLike<number>|null|undefined} losses
 * @param {number} width
 * @param {number} height
 * @param {number} [padding=8]
 * @param {{log?: boolean}} [options] `log: true` plots log10(loss)
 * @returns {{x: number, y: number, loss: number, index: number}[]}
 */
export function lossCurvePoints(losses, width, height, padding = 8, options = {}) {
  const log = Boolean(options && options.log);
  const values = losses ? Array.from(losses) : [];
  const w = Math.max(0, finiteOr0(width));
  const h = Math.max(0, finiteOr0(height));
  const pad = Math.max(0, Math.min(finiteOr0(padding), w / 2, h / 2));
  const left = pad;
  const top = pad;
  const plotW = w - 2 * pad;
  const plotH = h - 2 * pad;

  const kept = [];
  values.forEach((loss, index) => {
    if (!isFiniteNumber(loss)) return;
    if (log && loss <= 0) return;
    kept.push({ index, loss, v: log ? Math.log10(loss) : loss });
  });
  if (kept.length === 0) return [];

  let min = Infinity;
  let max = -Infinity;
  for (const p of kept) {
    min = Math.min(min, p.v);
    max = Math.max(max, p.v);
  }
  const range = max - min;
  const slots = values.length - 1;
  return kept.map(({ index, loss, v }) => ({
    x: slots === 0 ? left + plotW / 2 : left + (plotW * index) / slots,
    y: range > 0 ? top + plotH * (1 - (v - min) / range) : top + plotH / 2,
    loss,
    index,
  }));
}

/**
 * Draws the loss curve on a 2D canvas context: a filled background, the two
 * axes (left and bottom edge of the plot area), the curve as one path through
 * every point of {@link lossCurvePoints}, and the max/min loss as labels.
 * Draws only the background and axes when there is no finite loss. Only
 * standard CanvasRenderingContext2D calls are used, so a recording fake
 * context works in tests; the context state is saved and restored.
 *
 * @param {CanvasRenderingContext2D} ctx
 * @param {ArrayLike<number>|null|undefined} losses
 * @param {number} width
 * @param {number} height
 * @param {{padding?: number, log?: boolean, style?: Partial<typeof CURVE_STYLE>}} [options]
 * @returns {{x: number, y: number, loss: number, index: number}[]} the points drawn
 */
export function drawLossCurve(ctx, losses, width, height, options = {}) {
  const padding = options.padding ?? 8;
  const style = { ...CURVE_STYLE, ...(options.style || {}) };
  const w = Math.max(0, finiteOr0(width));
  const h = Math.max(0, finiteOr0(height));
  const points = lossCurvePoints(losses, w, h, padding, { log: options.log });
  const pad = Math.max(0, Math.min(finiteOr0(padding), w / 2, h / 2));

  ctx.save();
  ctx.fillStyle = style.background;
  ctx.fillRect(0, 0, w, h);

  ctx.strokeStyle = style.axis;
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(pad, pad);
  ctx.lineTo(pad, h - pad);
  ctx.lineTo(w - pad, h - pad);
  ctx.stroke();

  if (points.length > 0) {
    ctx.strokeStyle = style.line;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    points.forEach((p, i) => (i === 0 ? ctx.moveTo(p.x, p.y) : ctx.lineTo(p.x, p.y)));
    ctx.stroke();
    if (points.length === 1) {
      ctx.fillStyle = style.line;
      ctx.fillRect(points[0].x - 1.5, points[0].y - 1.5, 3, 3);
    }

    let lo = points[0].loss;
    let hi = points[0].loss;
    for (const p of points) {
      lo = Math.min(lo, p.loss);
      hi = Math.max(hi, p.loss);
    }
    ctx.fillStyle = style.text;
    ctx.font = "10px sans-serif";
    // max at the top right, min at the bottom left: clear of a falling curve
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText(formatLoss(hi), w - pad - 2, pad);
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillText(formatLoss(lo), pad + 3, h - pad - 1);
  }
  ctx.restore();
  return points;
}

/**
 * Keeps one {@link TrainingState} per node id and routes messages to it.
 * @returns {{
 *   get(nodeId: string|number): TrainingState,
 *   has(nodeId: string|number): boolean,
 *   ingest(type: string, detail: any): TrainingState|null,
 *   delete(nodeId: string|number): boolean,
 *   ids(): string[],
 * }}
 */
export function createTracker() {
  /** @type {Map<string, TrainingState>} */
  const states = new Map();
  const get = (nodeId) => {
    const key = String(nodeId);
    let state = states.get(key);
    if (!state) {
      state = new TrainingState(key);
      states.set(key, state);
    }
    return state;
  };
  return {
    /** The state of a node, created empty on first use. */
    get,
    /** Whether a state exists for the node. */
    has: (nodeId) => states.has(String(nodeId)),
    /**
     * Routes a message to the state of `detail.node`.
     * @returns the state it changed, or null when the message was unusable
     */
    ingest(type, detail) {
      if (!detail || typeof detail !== "object") return null;
      if (detail.node === undefined || detail.node === null) return null;
      if (!Object.values(EVENTS).includes(type)) return null;
      const state = get(detail.node);
      return state.ingest(type, detail) ? state : null;
    },
    /** Drops a node's state (e.g. when the node is removed). */
    delete: (nodeId) => states.delete(String(nodeId)),
    /** The node ids that have a state. */
    ids: () => [...states.keys()],
  };
}

/** Node types of the SPARE pack start with this. */
export const PACK_PREFIX = "SPARE_";

/**
 * Settings widgets of a new SPARE node as the pack wants them: widgets whose
 * input the node definition marks `advanced` (`widget.options.advanced`, set
 * by ComfyUI's front end from the input spec) are flagged `widget.advanced`,
 * so the front end folds them until the node's advanced mode is toggled; the
 * seed's control-after-generate widget starts at "fixed", so that a re-run
 * trains the same LoRA. Returns what was changed, for tests and logs.
 *
 * @param {Array<{name: string, value?: any, options?: {advanced?: boolean}, advanced?: boolean}>} widgets
 * @returns {{advanced: string[], seedControl: boolean}}
 */
export function prepareSettingsWidgets(widgets) {
  const changed = { advanced: [], seedControl: false };
  for (const widget of widgets ?? []) {
    if (widget?.options?.advanced && !widget.advanced) {
      widget.advanced = true;
      changed.advanced.push(widget.name);
    }
    if (widget?.name === "control_after_generate" && widget.value !== "fixed") {
      widget.value = "fixed";
      changed.seedControl = true;
    }
  }
  return changed;
}
