#!/usr/bin/env node
// Headless Chromium against ringws, driven by playwright-core.
//
// usage: node browser.js WS_URL SCREENSHOT.png LABEL [deflate]
//
// With "deflate" the server runs with --deflate shared: the page and the
// handshake check expect permessage-deflate to be accepted instead.
//
// Serves page.html from a tiny HTTP server on 127.0.0.1 (ephemeral port),
// launches Debian's /usr/bin/chromium with a fresh --user-data-dir, loads the
// page (which opens new WebSocket(WS_URL) and runs text / ArrayBuffer / 1 MiB
// echoes, checks ws.extensions === "" and closes with 4000), watches the
// handshake over the DevTools protocol (Chromium offers permessage-deflate,
// ringws must not accept it), saves a screenshot and prints one PASS/FAIL line
// per step. Exit status 0 only if every step passed.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const http = require("http");
const { chromium } = require("playwright-core");

const [wsUrl, shotPath, label = "browser", mode = ""] = process.argv.slice(2);
const deflate = mode === "deflate";
if (!wsUrl || !shotPath) {
  console.error("usage: node browser.js WS_URL SCREENSHOT.png LABEL");
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const page_html = fs.readFileSync(path.join(__dirname, "page.html"));

function serve() {
  return new Promise((resolve) => {
    const srv = http.createServer((req, res) => {
      const p = req.url.split("?")[0];
      if (p === "/" || p === "/page.html") {
        res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
        res.end(page_html);
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    srv.listen(0, "127.0.0.1", () => resolve(srv));
  });
}

async function main() {
  const results = [];
  const pass = (name, detail) => results.push(["PASS", name, detail]);
  const fail = (name, detail) => results.push(["FAIL", name, detail]);

  const srv = await serve();
  const pageUrl = `http://127.0.0.1:${srv.address().port}/page.html?ws=${encodeURIComponent(wsUrl)}&label=${encodeURIComponent(label)}${deflate ? "&deflate=1" : ""}`;
  const profile = fs.mkdtempSync(path.join(process.env.INTEROP_TMP || os.tmpdir(), "chromium-profile-"));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 900, height: 560 },
      timeout: 60000,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    const page = context.pages()[0] || (await context.newPage());
    page.on("console", (m) => { if (m.type() === "error") console.error(`[page console] ${m.text()}`); });

    // Watch the opening handshake through the DevTools protocol.
    const handshake = {};
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    cdp.on("Network.webSocketWillSendHandshakeRequest", (e) => { handshake.request = e.request.headers; });
    cdp.on("Network.webSocketHandshakeResponseReceived", (e) => { handshake.response = e.response; });

    await page.goto(pageUrl, { timeout: 20000 });
    await page.waitForFunction(() => document.title === "PASS" || document.title === "FAIL", null, { timeout: 60000 });
    const steps = await page.evaluate(() => window.__results);
    for (const s of steps) (s.ok ? pass : fail)(`browser ${s.step}`, s.detail);

    const lower = (h) => Object.fromEntries(Object.entries(h || {}).map(([k, v]) => [k.toLowerCase(), v]));
    const req = lower(handshake.request);
    const resp = handshake.response ? lower(handshake.response.headers) : null;
    if (!resp) {
      fail("browser handshake", "no handshake seen over the DevTools protocol");
    } else {
      const offered = req["sec-websocket-extensions"] || "";
      const accepted = resp["sec-websocket-extensions"];
      const ok = handshake.response.status === 101 &&
        (deflate ? (accepted || "").startsWith("permessage-deflate") : accepted === undefined);
      const detail = `status ${handshake.response.status}; offered "${offered}"; answered ${accepted === undefined ? "no Sec-WebSocket-Extensions" : `"${accepted}"`}`;
      (ok ? pass : fail)(`browser handshake ${deflate ? "accepts" : "declines"} permessage-deflate`, detail);
      await page.evaluate(([ok, detail]) => window.__addResult("handshake (DevTools)", ok, detail), [ok, detail]);
    }
    fs.mkdirSync(path.dirname(shotPath), { recursive: true });
    await page.screenshot({ path: shotPath, fullPage: true });
    console.log(`# screenshot: ${shotPath} (${context.browser() ? context.browser().version() : "chromium"})`);
  } catch (e) {
    fail("browser run", String((e && e.message) || e).split("\n")[0]);
  } finally {
    if (context) await context.close().catch(() => {});
    srv.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  for (const [v, name, detail] of results) console.log(`${v} [${label}] ${name}: ${detail}`);
  return results.length > 0 && results.every((r) => r[0] === "PASS") ? 0 : 1;
}

main().then((rc) => process.exit(rc), (e) => { console.log(`FAIL [${label}] browser: ${e}`); process.exit(1); });
