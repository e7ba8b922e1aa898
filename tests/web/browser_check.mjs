#!/usr/bin/env node
/**
 * Browser check of the spare.training extension in headless Chromium.
 *
 *   node tests/web/browser_check.mjs
 *
 * Serves the repository over a local HTTP port with ComfyUI's URL layout
 * (web/ at /extensions/spare/, the stand-ins at /scripts/app.js and
 * /scripts/api.js), opens tests/web/harness.html twice in headless Chromium
 * (once with --dump-dom, once with --screenshot), and asserts that the
 * harness ran, that the page shows the expected readout, and that the loss
 * canvas is not blank. The screenshot goes to $OUT_DIR (default: a new temp
 * dir, printed).
 *
 * Chromium: $CHROMIUM, else /usr/bin/chromium. When it is missing the check
 * fails (exit 1) under CI=true and is skipped (exit 0) otherwise.
 *
 * Node built-in modules only. The server part is exported for the tests.
 */
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { EXPECTED_READOUT } from "./stand_ins/messages.js";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const HARNESS_URL_PATH = "/tests/web/harness.html";
const CHROMIUM_TIMEOUT_MS = 90_000;

/**
 * URL path -> repository path. A key ending in "/" maps a folder, any other
 * key one file. This is how ComfyUI lays out an extension's URLs:
 * `/extensions/<pack>/<file>` for the pack's WEB_DIRECTORY, `/scripts/` for
 * the front end's own modules.
 */
export const ROUTES = Object.freeze([
  ["/scripts/app.js", "tests/web/stand_ins/app.js"],
  ["/scripts/api.js", "tests/web/stand_ins/api.js"],
  ["/extensions/spare/", "web/"],
  ["/tests/web/", "tests/web/"],
]);

const MIME_TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".png": "image/png",
};

/**
 * The file a request path is served from, or null (not routed, or outside
 * the routed folder).
 * @param {string} urlPath e.g. "/extensions/spare/spare_training.js?v=1"
 * @param {string} [root] the repository root
 * @returns {string|null} absolute file path
 */
export function resolveRequest(urlPath, root = REPO_ROOT) {
  let pathname;
  try {
    pathname = decodeURIComponent(new URL(urlPath, "http://localhost").pathname);
  } catch {
    return null;
  }
  if (pathname.includes("\0")) return null;
  for (const [prefix, target] of ROUTES) {
    if (!prefix.endsWith("/")) {
      if (pathname === prefix) return path.resolve(root, target);
      continue;
    }
    if (!pathname.startsWith(prefix)) continue;
    const base = path.resolve(root, target);
    const file = path.resolve(base, `./${pathname.slice(prefix.length)}`);
    return file.startsWith(base + path.sep) ? file : null;
  }
  return null;
}

/**
 * Serves the routes on 127.0.0.1 at a free port.
 * @param {string} [root] the repository root
 * @returns {Promise<{url: string, port: number, close: () => Promise<void>}>}
 */
export function startServer(root = REPO_ROOT) {
  const server = http.createServer((req, res) => {
    const send = (status, body, type = "text/plain; charset=utf-8") => {
      res.writeHead(status, { "Content-Type": type, "Cache-Control": "no-store" });
      res.end(req.method === "HEAD" ? undefined : body);
    };
    if (req.method !== "GET" && req.method !== "HEAD") return send(405, "method not allowed\n");
    const file = resolveRequest(req.url || "/", root);
    if (!file) return send(404, "not found\n");
    fs.readFile(file, (err, data) => {
      if (err) return send(404, "not found\n");
      send(200, data, MIME_TYPES[path.extname(file)] || "application/octet-stream");
    });
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      resolve({
        url: `http://127.0.0.1:${port}`,
        port,
        close: () => new Promise((done) => server.close(() => done())),
      });
    });
  });
}

/**
 * The Chromium binary to use, or null when it is not there.
 * @returns {{path: string, found: boolean}}
 */
export function findChromium(env = process.env) {
  const candidate = env.CHROMIUM || "/usr/bin/chromium";
  let found = false;
  try {
    fs.accessSync(candidate, fs.constants.X_OK);
    found = fs.statSync(candidate).isFile();
  } catch {
    found = false;
  }
  return { path: candidate, found };
}

/** Flags for one headless run; each run gets a new profile folder. */
export function chromiumArgs(userDataDir, extra, url) {
  return [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    `--user-data-dir=${userDataDir}`,
    "--virtual-time-budget=5000",
    ...extra,
    url,
  ];
}

/** Runs Chromium once; resolves with its exit code, stdout and stderr. */
function runChromium(binary, extra, url) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "spare-chromium-profile-"));
  return new Promise((resolve) => {
    const child = spawn(binary, chromiumArgs(userDataDir, extra, url), {
      stdio: ["ignore", "pipe", "pipe"],
      detached: true, // own process group, so a timeout ends Chromium's helpers too
    });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk) => { stdout += chunk; });
    child.stderr.setEncoding("utf8").on("data", (chunk) => { stderr += chunk; });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }, CHROMIUM_TIMEOUT_MS);
    const finish = (code) => {
      clearTimeout(timer);
      fs.rmSync(userDataDir, { recursive: true, force: true });
      resolve({ code, stdout, stderr, timedOut });
    };
    child.on("error", (err) => { stderr += String(err); finish(-1); });
    child.on("close", (code) => finish(code));
  });
}

/** Reads one attribute of <body> from a dumped DOM (or null). */
export function bodyAttribute(dom, name) {
  const body = /<body\b[^>]*>/i.exec(dom);
  if (!body) return null;
  const match = new RegExp(`\\s${name}="([^"]*)"`).exec(body[0]);
  return match ? match[1] : null;
}

/**
 * Checks a dumped DOM of the harness page.
 * @returns {string[]} the failures (empty when all is well)
 */
export function checkDom(dom, expectedReadout = EXPECTED_READOUT) {
  const failures = [];
  const harness = bodyAttribute(dom, "data-harness");
  if (harness !== "done") {
    const error = bodyAttribute(dom, "data-error");
    failures.push(`harness did not finish (data-harness=${harness})${error ? `: ${error}` : ""}`);
  }
  if (!dom.includes(`>${expectedReadout}</div>`)) {
    failures.push(`the readout element does not show "${expectedReadout}"`);
  }
  if (bodyAttribute(dom, "data-readout") !== expectedReadout) {
    failures.push(`data-readout is ${JSON.stringify(bodyAttribute(dom, "data-readout"))}`);
  }
  if (bodyAttribute(dom, "data-canvas-blank") !== "false") {
    failures.push(`the loss canvas is blank (data-canvas-blank=${bodyAttribute(dom, "data-canvas-blank")})`);
  }
  return failures;
}

async function main() {
  const chromium = findChromium();
  if (!chromium.found) {
    if (process.env.CI === "true") {
      console.error(`browser check failed: chromium not found at ${chromium.path} (set $CHROMIUM)`);
      return 1;
    }
    console.log("skipped: chromium not found");
    return 0;
  }
  const outDir = process.env.OUT_DIR || fs.mkdtempSync(path.join(os.tmpdir(), "spare-web-check-"));
  fs.mkdirSync(outDir, { recursive: true });
  const screenshot = path.join(outDir, "spare_training.png");

  const server = await startServer();
  const url = server.url + HARNESS_URL_PATH;
  const failures = [];
  try {
    const dump = await runChromium(chromium.path, ["--dump-dom"], url);
    if (dump.code !== 0 || dump.timedOut) {
      failures.push(`chromium --dump-dom exited ${dump.code}${dump.timedOut ? " (timed out)" : ""}: ${dump.stderr.slice(-2000)}`);
    }
    fs.writeFileSync(path.join(outDir, "harness_dom.html"), dump.stdout);
    failures.push(...checkDom(dump.stdout));

    fs.rmSync(screenshot, { force: true });
    const shot = await runChromium(chromium.path, [`--screenshot=${screenshot}`, "--window-size=800,600"], url);
    let png = null;
    try {
      png = fs.readFileSync(screenshot);
    } catch {
      png = null;
    }
    if (!png || png.length < 8 || png.readUInt32BE(0) !== 0x89504e47) {
      failures.push(`no PNG screenshot written (chromium exited ${shot.code}): ${shot.stderr.slice(-2000)}`);
    }
  } finally {
    await server.close();
  }

  console.log(`output: ${outDir}`);
  if (failures.length) {
    for (const failure of failures) console.error(`FAIL: ${failure}`);
    return 1;
  }
  console.log(`ok: readout "${EXPECTED_READOUT}", canvas not blank, screenshot ${screenshot}`);
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (code) => { process.exitCode = code; },
    (err) => { console.error(err); process.exitCode = 1; },
  );
}
