/**
 * Stand-in for ComfyUI's `scripts/api.js` in the tests: an EventTarget, like
 * the real one, that the tests feed server messages through.
 */
class StandInApi extends EventTarget {
  /** Delivers a server message as the real api does: a CustomEvent with `detail`. */
  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

export const api = new StandInApi();
