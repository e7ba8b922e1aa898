/**
 * Stand-in for ComfyUI's `scripts/app.js` in the tests: only what the
 * spare.training extension touches, plus counters the tests read.
 */
export const app = {
  /** Extensions passed to registerExtension, in order. */
  extensions: [],
  /** How often refreshComboInNodes was called. */
  refreshCount: 0,
  graph: {
    /** How often setDirtyCanvas was called. */
    dirtyCount: 0,
    setDirtyCanvas() {
      this.dirtyCount += 1;
    },
  },
  registerExtension(extension) {
    this.extensions.push(extension);
  },
  async refreshComboInNodes() {
    this.refreshCount += 1;
  },
  /** The registered extension of that name (test helper). */
  extension(name) {
    return this.extensions.find((e) => e.name === name);
  },
};
