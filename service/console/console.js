// kerasserve console: models and their states, a try-it form, health at a glance.
// Plain JavaScript, no library. It calls only the public routes (models, the predict routes,
// readyz, metrics), relative to this page, and polls only while the page is visible.
"use strict";
(() => {
  const TOKEN_KEY = "kerasserve.token";
  const POLL_MS = 2000;
  const BUSY_POLL_MS = 500; // while a version loads or unloads, so its states show as they change
  const BUSY = new Set(["START", "LOADING", "UNLOADING"]);
  const WINDOW_MS = 60000; // request rate and p99 over the last minute
  const $ = (id) => document.getElementById(id);

  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let timer = null;
  let generation = 0;
  let modelsText = "";
  let models = [];
  let samples = []; // [{t, perModel}] from /metrics, the last minute
  let chosen = []; // File objects to send
  const openModels = new Set();

  class AuthNeeded extends Error {}

  // --- calls ---------------------------------------------------------------------------------
  async function call(path, options = {}) {
    const headers = Object.assign({}, options.headers);
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
    if (response.status === 401) {
      const body = await response.json().catch(() => ({}));
      askToken("401 Unauthorized: " + (body.error || "this server needs a token"));
      throw new AuthNeeded();
    }
    return response;
  }

  function askToken(message) {
    stopPolling();
    $("auth").hidden = false;
    $("auth-message").textContent = message;
    $("token").focus();
  }

  $("auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    $("auth-message").textContent = "checking…";
    modelsText = "";
    poll().then((accepted) => {
      if (!accepted) return; // refused again: askToken showed why
      $("auth").hidden = true;
      $("token").value = "";
    });
  });

  $("forget-token").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    location.reload();
  });

  // --- polling -------------------------------------------------------------------------------
  function stopPolling() {
    clearTimeout(timer);
    timer = null;
  }

  // One polling loop: a newer call (token given, page shown again) supersedes the one in flight.
  // Resolves to false when the server refused the token.
  async function poll() {
    stopPolling();
    const mine = ++generation;
    try {
      await Promise.all([pollModels(), pollReady(), pollMetrics()]);
    } catch (error) {
      if (error instanceof AuthNeeded) return false;
      $("models-error").textContent = "Cannot reach the server: " + error.message;
    }
    $("forget-token").hidden = !token;
    const busy = models.some((m) => m.versions.some((v) => BUSY.has(v.state)));
    if (mine === generation && !document.hidden) timer = setTimeout(poll, busy ? BUSY_POLL_MS : POLL_MS);
    return true;
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) stopPolling();
    else if ($("auth").hidden) poll();
  });

  async function pollModels() {
    const response = await call("models");
    const text = await response.text();
    $("models-error").textContent = response.ok ? "" : "GET /models: " + text;
    if (!response.ok || text === modelsText) return;
    modelsText = text;
    const before = new Map(models.map((m) => [m.name, modelState(m)]));
    models = JSON.parse(text).models;
    // The list is redrawn silently; one polite line says which models changed state.
    const changed = models.filter((m) => before.size && before.get(m.name) !== modelState(m));
    if (changed.length) $("announce").textContent = changed.map((m) => `${m.name} is ${modelState(m)}`).join(". ");
    renderModels();
    renderChoices();
  }

  async function pollReady() {
    const response = await call("readyz");
    const body = await response.json();
    const ready = $("ready");
    const reason = body.ready
      ? "Ready: every model present at start-up has loaded."
      : "Not ready: " + (body.error || "models are still loading");
    if (ready.textContent === (body.ready ? "ready" : "not ready") && $("ready-reason").textContent === reason) return;
    ready.textContent = body.ready ? "ready" : "not ready"; // changed only: screen readers announce each change
    ready.className = "pill " + (body.ready ? "ok" : "bad");
    $("ready-reason").textContent = reason;
  }

  async function pollMetrics() {
    const response = await call("metrics");
    if (!response.ok) return;
    const now = performance.now();
    samples.push({ t: now, perModel: parseMetrics(await response.text()) });
    while (samples.length > 2 && now - samples[1].t >= WINDOW_MS) samples.shift();
    renderHealth();
  }

  // --- models view ---------------------------------------------------------------------------
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child !== undefined && child !== null && child !== false) node.append(child);
    }
    return node;
  }

  const shape = (t) => `${t.name}: ${t.dtype} [${t.shape.map((d) => (d === null ? "?" : d)).join(", ")}]`;
  const badge = (state) => el("span", { className: "state " + state, text: state });

  function modelState(model) {
    const serving = model.versions.find((v) => v.version === model.serving_version);
    const newest = model.versions[model.versions.length - 1];
    return (serving || newest || { state: "UNKNOWN" }).state;
  }

  function renderModels() {
    const box = $("models");
    const focused = document.activeElement && document.activeElement.dataset.key;
    if (!models.length) {
      box.replaceChildren(el("p", { className: "muted", text: "No models yet: put a model file into the models folder." }));
      return;
    }
    box.replaceChildren(...models.map(renderModel));
    if (focused) {
      const again = box.querySelector(`[data-key="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function renderModel(model) {
    const details = el(
      "details",
      { open: openModels.has(model.name) },
      el("summary", { "data-key": "summary:" + model.name }, "Details: labels, inputs and outputs"),
      describe(model),
    );
    details.addEventListener("toggle", () => {
      if (details.open) openModels.add(model.name);
      else openModels.delete(model.name);
    });
    const rows = model.versions.map((v) =>
      el(
        "tr",
        { "data-version": v.version },
        el("th", { scope: "row", text: v.version + (v.version === model.serving_version ? " (serving)" : "") }),
        el("td", {}, badge(v.state)),
        el("td", { text: v.format || "" }),
        el("td", { text: v.device || "" }),
        el("td", { text: v.load_s !== undefined ? `${v.load_s.toFixed(2)} s + ${v.warmup_s.toFixed(2)} s` : "" }),
      ),
    );
    const notes = model.versions.flatMap((v) => [
      v.error && el("pre", { className: "error load-error", "data-version": v.version, text: `version ${v.version}: ${v.error}` }),
      ...(v.warnings || []).map((w) => el("p", { className: "warning", text: `version ${v.version}: ${w}` })),
    ]);
    return el(
      "article",
      { className: "model", "data-model": model.name },
      el("h3", {}, el("span", { className: "name", text: model.name }), " ", badge(modelState(model))),
      el(
        "table",
        { className: "versions" },
        el("caption", { className: "sr-only", text: `Versions of ${model.name}` }),
        el(
          "thead",
          {},
          el("tr", {}, ...["Version", "State", "Format", "Device", "Load + warm-up"].map((h) => el("th", { scope: "col", text: h }))),
        ),
        el("tbody", {}, rows),
      ),
      notes,
      details,
    );
  }

  function describe(model) {
    const serving = model.versions.find((v) => v.version === model.serving_version) || {};
    const items = [];
    const add = (term, value) => value && items.push(el("dt", { text: term }), el("dd", {}, value));
    add("Device", model.device);
    add("Inputs", (model.inputs || []).map(shape).join("; "));
    add("Outputs", (model.outputs || []).map(shape).join("; "));
    if (serving.preprocessing) {
      const p = serving.preprocessing;
      const pixels = Object.entries(p).filter(([k]) => k !== "chosen_by" && k !== "reason");
      add("Preprocessing", `${pixels.map(([k, v]) => `${k} ${v}`).join(", ")} (${p.chosen_by}: ${p.reason})`);
    }
    const labels = model.labels || [];
    add("Labels", labels.length ? `${labels.length}: ${labels.slice(0, 20).join(", ")}${labels.length > 20 ? ", …" : ""}` : "");
    const versionLabels = Object.entries(model.version_labels || {});
    add("Version labels", versionLabels.map(([k, v]) => `${k} → ${v}`).join(", "));
    return items.length ? el("dl", {}, items) : el("p", { className: "muted", text: "No version is serving yet." });
  }

  // --- try it --------------------------------------------------------------------------------
  function renderChoices() {
    const select = $("try-model");
    const previous = select.value;
    const names = models.filter((m) => m.serving_version !== null).map((m) => m.name);
    select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
    if (names.includes(previous)) select.value = previous;
    renderVersions();
  }

  function renderVersions() {
    const select = $("try-version");
    const previous = select.value;
    const model = models.find((m) => m.name === $("try-model").value);
    const available = model ? model.versions.filter((v) => v.state === "AVAILABLE").map((v) => String(v.version)) : [];
    select.replaceChildren(el("option", { value: "", text: "serving" }), ...available.map((v) => el("option", { value: v, text: v })));
    if (available.includes(previous)) select.value = previous;
    updateCurl();
  }

  $("try-model").addEventListener("change", renderVersions);
  for (const id of ["try-version", "try-route", "try-topk", "try-json"]) $(id).addEventListener("input", updateCurl);

  function inputMode() {
    return document.querySelector('input[name="input"]:checked').value;
  }

  for (const radio of document.querySelectorAll('input[name="input"]')) {
    radio.addEventListener("change", () => {
      $("images-input").hidden = inputMode() !== "images";
      $("json-input").hidden = inputMode() !== "json";
      updateCurl();
    });
  }

  function choose(files) {
    chosen = Array.from(files).filter((f) => f.type.startsWith("image/") || f.type === "");
    $("chosen").replaceChildren(
      ...chosen.map((f) => el("figure", {}, el("img", { src: URL.createObjectURL(f), alt: "" }), el("figcaption", { text: f.name }))),
    );
    updateCurl();
  }

  $("try-files").addEventListener("change", (event) => choose(event.target.files));
  const drop = $("images-input");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files);
  });

  function target() {
    const model = $("try-model").value;
    const version = $("try-version").value;
    const route = $("try-route").value;
    let path = `models/${encodeURIComponent(model)}${version ? "/versions/" + version : ""}/${route}`;
    if (route === "predict_classes") path += "?top_k=" + Math.max(1, parseInt($("try-topk").value, 10) || 1);
    return path;
  }

  const quote = (text) => "'" + text.replace(/'/g, "'\\''") + "'";

  function updateCurl() {
    const parts = ["curl"];
    if (token) parts.push('-H "Authorization: Bearer $TOKEN"');
    if (inputMode() === "images") {
      for (const f of chosen.length ? chosen : [{ name: "image.png" }]) parts.push("-F " + quote("image=@" + f.name));
    } else {
      parts.push("-H 'Content-Type: application/json'", "-d " + quote($("try-json").value));
    }
    parts.push(quote(new URL(target(), location.href).href));
    const field = $("try-curl");
    field.value = parts.join(" ");
    field.style.height = "auto"; // as tall as the line wraps
    field.style.height = field.scrollHeight + 2 + "px";
  }

  window.addEventListener("resize", updateCurl);

  $("copy-curl").addEventListener("click", async () => {
    const field = $("try-curl");
    try {
      await navigator.clipboard.writeText(field.value);
    } catch {
      field.select(); // no clipboard API (plain HTTP on another host): copy the selection
      document.execCommand("copy");
    }
    $("try-status").textContent = "curl line copied.";
  });

  $("try-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const status = $("try-status");
    let body;
    const headers = {};
    if (!$("try-model").value) {
      status.textContent = "No model is AVAILABLE yet.";
      return;
    }
    if (inputMode() === "images") {
      if (!chosen.length) {
        status.textContent = "Pick one or more images first.";
        $("try-files").focus();
        return;
      }
      body = new FormData();
      for (const f of chosen) body.append("image", f, f.name);
    } else {
      body = $("try-json").value;
      headers["Content-Type"] = "application/json";
    }
    updateCurl();
    status.textContent = "Running…";
    $("try-run").disabled = true;
    try {
      const started = performance.now();
      const response = await call(target(), { method: "POST", body, headers });
      const text = await response.text();
      const ms = performance.now() - started;
      let answer;
      try {
        answer = JSON.parse(text);
      } catch {
        answer = text;
      }
      $("try-raw").textContent = typeof answer === "string" ? answer : JSON.stringify(answer, null, 2);
      const where = answer.model ? ` from ${answer.model} version ${answer.version}` : "";
      status.textContent = response.ok
        ? `HTTP ${response.status}${where} in ${ms.toFixed(0)} ms (round trip)`
        : `HTTP ${response.status}: ${answer.error || text}`;
      status.className = response.ok ? "" : "error";
      renderResults(response.ok ? answer.predictions || [] : []);
    } catch (error) {
      if (!(error instanceof AuthNeeded)) status.textContent = "Request failed: " + error.message;
    } finally {
      $("try-run").disabled = false;
    }
  });

  function renderResults(predictions) {
    const names = inputMode() === "images" ? chosen.map((f) => f.name) : [];
    $("try-results").replaceChildren(
      ...predictions.map((prediction, i) =>
        el("article", { className: "result" }, el("h3", { text: names[i] || `row ${i + 1}` }), renderPrediction(prediction)),
      ),
    );
  }

  function renderPrediction(prediction) {
    if (prediction && typeof prediction === "object" && !Array.isArray(prediction)) {
      if ("class_id" in prediction) return chart(prediction);
      // several outputs: one chart (or value) per output
      return el(
        "div",
        {},
        Object.entries(prediction).map(([output, value]) => el("section", {}, el("h4", { text: output }), renderPrediction(value))),
      );
    }
    return el("pre", { className: "value", text: JSON.stringify(prediction) });
  }

  function chart(prediction) {
    const rows = prediction.top_k || [prediction];
    if (!rows.every((r) => typeof r.score === "number")) return el("pre", { className: "value", text: JSON.stringify(prediction) });
    return el(
      "ol",
      { className: "topk" },
      rows.map((r) => {
        const bar = el("span", { className: "fill" });
        bar.style.width = `${Math.max(0, Math.min(1, r.score)) * 100}%`;
        return el(
          "li",
          {},
          el("span", { className: "label", text: r.label !== null && r.label !== undefined ? r.label : `class ${r.class_id}` }),
          el("span", { className: "bar", "aria-hidden": "true" }, bar),
          el("span", { className: "score", text: r.score.toFixed(4) }),
        );
      }),
    );
  }

  // --- health --------------------------------------------------------------------------------
  // Prometheus text: the request counter and duration histogram, summed per model over routes,
  // protocols and workers. Requests not for a model (model="") and unknown names are left out.
  function parseMetrics(text) {
    const perModel = {};
    const line = /^(kerasserve_requests_total|kerasserve_request_duration_seconds_bucket)\{([^}]*)\}\s+(\S+)/;
    for (const row of text.split("\n")) {
      const match = line.exec(row);
      if (!match) continue;
      const labels = {};
      match[2].replace(/(\w+)="((?:[^"\\]|\\.)*)"/g, (_, key, value) => (labels[key] = value));
      if (!labels.model || labels.model.startsWith("_")) continue;
      const entry = (perModel[labels.model] ||= { count: 0, errors: 0, buckets: {} });
      const value = parseFloat(match[3]);
      if (match[1] === "kerasserve_requests_total") {
        entry.count += value;
        if (!/^[23]/.test(labels.code) && labels.code !== "OK") entry.errors += value;
      } else {
        entry.buckets[labels.le] = (entry.buckets[labels.le] || 0) + value;
      }
    }
    return perModel;
  }

  // The q-quantile of a cumulative histogram {le: count}, interpolated inside its bucket (as PromQL's histogram_quantile).
  function quantile(q, buckets) {
    const sorted = Object.entries(buckets)
      .map(([le, count]) => [le === "+Inf" ? Infinity : parseFloat(le), count])
      .sort((a, b) => a[0] - b[0]);
    const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
    if (total <= 0) return null;
    const rank = q * total;
    let [lower, below] = [0, 0];
    for (const [le, count] of sorted) {
      if (count >= rank) return le === Infinity ? lower : lower + ((le - lower) * (rank - below)) / Math.max(count - below, 1e-9);
      [lower, below] = [le, count];
    }
    return lower;
  }

  function renderHealth() {
    const first = samples[0];
    const last = samples[samples.length - 1];
    const seconds = (last.t - first.t) / 1000;
    const names = [...new Set([...models.map((m) => m.name), ...Object.keys(last.perModel)])].sort();
    const empty = { count: 0, errors: 0, buckets: {} };
    const rows = names.map((name) => {
      const now = last.perModel[name] || empty;
      const then = first.perModel[name] || empty;
      const count = now.count - then.count;
      const buckets = {};
      for (const le of Object.keys(now.buckets)) buckets[le] = now.buckets[le] - (then.buckets[le] || 0);
      const p99 = count > 0 ? quantile(0.99, buckets) : null;
      return el(
        "tr",
        { "data-model": name },
        el("th", { scope: "row", text: name }),
        el("td", { className: "rate", text: seconds > 0 ? (count / seconds).toFixed(2) : "…" }),
        el("td", { className: "p99", text: p99 === null ? "–" : `${(p99 * 1000).toFixed(1)} ms` }),
        el("td", { text: count > 0 ? `${(((now.errors - then.errors) / count) * 100).toFixed(0)}%` : "–" }),
      );
    });
    $("health-table").tBodies[0].replaceChildren(...rows);
  }

  poll();
  updateCurl();
})();
