// Tests of tests/web/browser_check.mjs: its server, its DOM checks, its
// Chromium-missing behaviour, and (where Chromium is installed) the check.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  REPO_ROOT,
  bodyAttribute,
  checkDom,
  findChromium,
  resolveRequest,
  startServer,
} from "./browser_check.mjs";
import { EXPECTED_READOUT } from "./stand_ins/messages.js";

const SCRIPT = fileURLToPath(new URL("./browser_check.mjs", import.meta.url));
const repo = (p) => path.join(REPO_ROOT, p);

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.close();
});

test("URLs map to ComfyUI's layout: stand-ins at /scripts, web/ at /extensions/spare", () => {
  assert.equal(resolveRequest("/scripts/app.js"), repo("tests/web/stand_ins/app.js"));
  assert.equal(resolveRequest("/scripts/api.js?v=2"), repo("tests/web/stand_ins/api.js"));
  assert.equal(resolveRequest("/extensions/spare/spare_training.js"), repo("web/spare_training.js"));
  assert.equal(resolveRequest("/tests/web/harness.html"), repo("tests/web/harness.html"));
  // the extension's own import resolves to the stand-in
  const imported = new URL("../../scripts/app.js", "http://x/extensions/spare/spare_training.js").pathname;
  assert.equal(resolveRequest(imported), repo("tests/web/stand_ins/app.js"));
});

test("nothing outside the routed folders is served", () => {
  for (const url of [
    "/README.md",
    "/scripts/other.js",
    "/extensions/spare/../../README.md",
    "/extensions/spare/..%2f..%2fREADME.md",
    "/tests/web/%2e%2e/%2e%2e/README.md",
    "/extensions/spare/",
    "/extensions/spare/%00",
    "/tests/web/%E0%A4%A",
  ]) {
    assert.equal(resolveRequest(url), null, url);
  }
});

test("the server serves the harness, the extension and the stand-ins", async () => {
  const get = (p, init) => fetch(server.url + p, init);
  const page = await get("/tests/web/harness.html");
  assert.equal(page.status, 200);
  assert.match(page.headers.get("content-type"), /^text\/html/);
  assert.match(await page.text(), /import\("\.\/harness\.js"\)/);

  const extension = await get("/extensions/spare/spare_training.js");
  assert.equal(extension.status, 200);
  assert.match(extension.headers.get("content-type"), /^text\/javascript/);
  assert.equal(await extension.text(), fs.readFileSync(repo("web/spare_training.js"), "utf8"));

  const api = await get("/scripts/api.js");
  assert.equal(await api.text(), fs.readFileSync(repo("tests/web/stand_ins/api.js"), "utf8"));

  assert.equal((await get("/extensions/spare/missing.js")).status, 404);
  assert.equal((await get("/package.json")).status, 404);
  assert.equal((await get("/tests/web/harness.html", { method: "POST" })).status, 405);
});

test("checkDom accepts a finished harness page and names each failure otherwise", () => {
  const good = `<html><head></head><body data-harness="done" data-readout="${EXPECTED_READOUT}" `
    + `data-canvas-blank="false"><div class="spare-readout">${EXPECTED_READOUT}</div></body></html>`;
  assert.deepEqual(checkDom(good), []);
  assert.equal(bodyAttribute(good, "data-readout"), EXPECTED_READOUT);

  const blank = good.replace('data-canvas-blank="false"', 'data-canvas-blank="true"');
  assert.deepEqual(checkDom(blank), ["the loss canvas is blank (data-canvas-blank=true)"]);

  const broken = '<body data-harness="error" data-error="TypeError: x"></body>';
  const failures = checkDom(broken);
  assert.equal(failures.length, 4);
  assert.equal(failures[0], "harness did not finish (data-harness=error): TypeError: x");
  assert.equal(checkDom("").length, 4);
});

test("without Chromium the check skips, or fails under CI=true", () => {
  const missing = path.join(os.tmpdir(), "no-such-chromium-here");
  assert.equal(findChromium({ CHROMIUM: missing }).found, false);
  const env = { ...process.env, CHROMIUM: missing };
  delete env.CI;
  const skipped = spawnSync(process.execPath, [SCRIPT], { env, encoding: "utf8" });
  assert.equal(skipped.status, 0, skipped.stderr);
  assert.equal(skipped.stdout.trim(), "skipped: chromium not found");

  const ci = spawnSync(process.execPath, [SCRIPT], { env: { ...env, CI: "true" }, encoding: "utf8" });
  assert.equal(ci.status, 1);
  assert.match(ci.stderr, /chromium not found at .*no-such-chromium-here/);
});

const chromium = findChromium();
test("the browser check passes in headless Chromium", {
  skip: chromium.found ? false : `chromium not found at ${chromium.path}`,
  timeout: 240_000,
}, () => {
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), "spare-web-check-test-"));
  const run = spawnSync(process.execPath, [SCRIPT], {
    env: { ...process.env, OUT_DIR: outDir },
    encoding: "utf8",
    timeout: 230_000,
  });
  assert.equal(run.status, 0, run.stdout + run.stderr);
  assert.match(run.stdout, /^ok: /m);
  assert.ok(fs.statSync(path.join(outDir, "spare_training.png")).size > 0);
  fs.rmSync(outDir, { recursive: true, force: true });
});
