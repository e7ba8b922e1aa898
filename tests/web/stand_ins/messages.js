/**
 * Stand-in server messages for the harness and the tests: what the Python
 * side sends during one short run of the SPARE_TrainAdapter node with id 7,
 * interleaved with messages of another node (id 9) that must be ignored.
 * Each entry is `[type, detail]`.
 */
export const NODE_ID = "7";
export const OTHER_NODE_ID = "9";

/** Losses of the train steps 1..12 (the last is 0.0123). */
export const TRAIN_LOSSES = [0.31, 0.22, 0.17, 0.12, 0.09, 0.071, 0.052, 0.04, 0.031, 0.022, 0.017, 0.0123];

const progress = (node, stage, step, total, loss = null, message = "") =>
  ["spare.progress", { node, stage, step, total, loss, message }];

/** Sent before the node exists on the page (the view must pick them up). */
export const MESSAGES_BEFORE_NODE = [
  progress(NODE_ID, "data", 16, 70, null, "encoding prompts"),
  progress(OTHER_NODE_ID, "data", 3, 5),
  progress(NODE_ID, "data", 70, 70),
];

/** Sent after the node was created and got its id. */
export const MESSAGES_AFTER_NODE = [
  progress(NODE_ID, "profile", 10, 10, null, "timestep profile"),
  progress(NODE_ID, "saliency", 64, 64, null, "6 modules chosen"),
  ...TRAIN_LOSSES.flatMap((loss, i) => [
    progress(NODE_ID, "train", i + 1, 120, loss),
    progress(OTHER_NODE_ID, "train", 90 + i, 100, 5 + i),
  ]),
  ["spare.error", { node: OTHER_NODE_ID, message: "other node failed" }],
  ["spare.done", { node: OTHER_NODE_ID, lora_path: "/x/other.safetensors", lora_name: "other.safetensors" }],
];

/** The readout of node 7 after all of the above. */
export const EXPECTED_READOUT = "train 12/120 · loss 0.0123";
