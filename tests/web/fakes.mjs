/**
 * Test doubles for the web tests: a 2D context that records every call, and
 * a minimal DOM (just what the extension and the harness use).
 */

function parseColor(value) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(String(value));
  return m ? [parseInt(m[1], 16), parseInt(m[2], 16), parseInt(m[3], 16), 255] : [0, 0, 0, 255];
}

/**
 * A CanvasRenderingContext2D double. Every method call is recorded in
 * `calls` as `{name, args, strokeStyle, fillStyle}`; unknown methods are
 * recorded too. `getImageData` returns the pixels of a crude raster: a
 * full-size fillRect paints every pixel, a stroke paints the pixels of the
 * path's vertices (enough to tell a blank canvas from a drawn one).
 */
export function recordingContext(width = 300, height = 150) {
  const target = {
    calls: [],
    fillStyle: "#000000",
    strokeStyle: "#000000",
    lineWidth: 1,
    font: "10px sans-serif",
    textBaseline: "alphabetic",
    pixels: new Uint8ClampedArray(width * height * 4),
    path: [],
    depth: 0,
  };
  const paint = (x, y, color) => {
    const px = Math.round(x);
    const py = Math.round(y);
    if (px < 0 || py < 0 || px >= width || py >= height) return;
    target.pixels.set(color, (py * width + px) * 4);
  };
  const behaviour = {
    save() { target.depth += 1; },
    restore() { target.depth -= 1; },
    beginPath() { target.path = []; },
    moveTo(x, y) { target.path.push([x, y]); },
    lineTo(x, y) { target.path.push([x, y]); },
    stroke() {
      const color = parseColor(target.strokeStyle);
      for (const [x, y] of target.path) paint(x, y, color);
    },
    fillRect(x, y, w, h) {
      const color = parseColor(target.fillStyle);
      for (let py = Math.max(0, Math.round(y)); py < Math.min(height, Math.round(y + h)); py++) {
        for (let px = Math.max(0, Math.round(x)); px < Math.min(width, Math.round(x + w)); px++) {
          paint(px, py, color);
        }
      }
    },
    getImageData(x, y, w, h) {
      if (x !== 0 || y !== 0 || w !== width || h !== height) throw new Error("fake getImageData: whole canvas only");
      return { width, height, data: new Uint8ClampedArray(target.pixels) };
    },
    measureText(text) { return { width: String(text).length * 6 }; },
  };
  return new Proxy(target, {
    get(obj, prop) {
      if (prop in obj || typeof prop === "symbol") return obj[prop];
      return (...args) => {
        obj.calls.push({ name: prop, args, strokeStyle: obj.strokeStyle, fillStyle: obj.fillStyle });
        return behaviour[prop] ? behaviour[prop](...args) : undefined;
      };
    },
  });
}

/**
 * The sub-paths that were stroked, each as `{points, strokeStyle}`: the
 * moveTo/lineTo points since the last beginPath, at the time of stroke().
 */
export function strokedPaths(calls) {
  const paths = [];
  let points = [];
  for (const call of calls) {
    if (call.name === "beginPath") points = [];
    else if (call.name === "moveTo" || call.name === "lineTo") points.push(call.args);
    else if (call.name === "stroke") paths.push({ points: [...points], strokeStyle: call.strokeStyle });
  }
  return paths;
}

class FakeElement {
  constructor(tagName) {
    this.tagName = tagName.toUpperCase();
    this.children = [];
    this.attributes = {};
    this.style = {};
    this.className = "";
    this.title = "";
    this.id = "";
    this._text = "";
  }

  appendChild(child) {
    this.children.push(child);
    child.parentNode = this;
    return child;
  }

  get textContent() {
    return this._text + this.children.map((c) => c.textContent).join("");
  }

  set textContent(value) {
    this.children = [];
    this._text = String(value);
  }

  setAttribute(name, value) { this.attributes[name] = String(value); }

  getAttribute(name) { return name in this.attributes ? this.attributes[name] : null; }

  /** Supports ".class", "#id" and a tag name. */
  querySelector(selector) {
    for (const child of this.children) {
      if (child.matches(selector)) return child;
      const found = child.querySelector(selector);
      if (found) return found;
    }
    return null;
  }

  matches(selector) {
    if (selector.startsWith(".")) return this.className.split(/\s+/).includes(selector.slice(1));
    if (selector.startsWith("#")) return this.id === selector.slice(1);
    return this.tagName === selector.toUpperCase();
  }
}

class FakeCanvas extends FakeElement {
  constructor() {
    super("canvas");
    this.width = 300;
    this.height = 150;
    this.context = null;
  }

  /** One recording context per canvas, made at the canvas size of the first call. */
  getContext(kind) {
    if (kind !== "2d") return null;
    if (!this.context) this.context = recordingContext(this.width, this.height);
    return this.context;
  }
}

/** A document with a <body> holding `<div id="node">`. */
export function fakeDocument() {
  const body = new FakeElement("body");
  const node = new FakeElement("div");
  node.id = "node";
  body.appendChild(node);
  return {
    body,
    createElement: (tag) => (tag.toLowerCase() === "canvas" ? new FakeCanvas() : new FakeElement(tag)),
    getElementById: (id) => body.querySelector(`#${id}`),
    querySelector: (selector) => body.querySelector(selector),
  };
}
