// The review page: the list comes from /api/items once; decisions go to /api/decide and /api/undo one at a time,
// in order, and the page says "saved" only when the server has answered (it writes the review file first).
// Every value reaches the page through textContent or a URL this script builds from numbers: never as markup.
"use strict";

(() => {
  const STRIP_BEFORE = 2;
  const STRIP_AFTER = 12;
  const PREFETCH = 3;
  const DETAILS_KEPT = 400;

  const $ = (id) => document.getElementById(id);
  const state = {
    list: null, decisions: new Map(), pending: new Map(), order: [], position: 0, seq: 0, counts: null,
    details: new Map(), inFlight: 0, acked: 0, error: "",
  };

  function element(tag, properties = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(properties)) {
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "style") Object.assign(node.style, value);
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    node.append(...children);
    return node;
  }

  async function api(path, body) {
    const init = { credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      init.headers = { "Content-Type": "application/json" };
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const reply = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(reply.error || `${response.status} ${response.statusText}`);
    return reply;
  }

  // ---------------------------------------------------------------------------------------------- the list

  const items = () => state.list.items;
  const emotionName = (index) => state.list.emotions[index];
  const currentId = () => state.order[state.position];
  const shownCount = (id) => Math.min(items().rows[id], 3);
  const cropUrl = (id, k) => `api/crop?id=${id}&k=${k}&r=${state.list.run}`;
  const percent = (value) => `${(100 * value).toFixed(1)} %`;

  function applyFilters(keep = true) {
    const list = items();
    const emotion = $("filter-emotion").value;
    const text = $("filter-source").value.trim().toLowerCase();
    const sourceOk = text ? state.list.sources.map((name) => name.toLowerCase().includes(text)) : null;
    const track = $("filter-track").value.trim();
    const low = Number.parseFloat($("filter-min").value);
    const high = Number.parseFloat($("filter-max").value);
    const unreviewed = $("filter-unreviewed").checked;
    const current = currentId();
    const order = [];
    for (let id = 0; id < list.source.length; id += 1) {
      if (emotion !== "" && list.emotion[id] !== Number(emotion)) continue;
      if (sourceOk && !sourceOk[list.source[id]]) continue;
      if (track !== "" && list.track[id] !== Number(track)) continue;
      if (!Number.isNaN(low) && list.confidence[id] < low) continue;
      if (!Number.isNaN(high) && list.confidence[id] > high) continue;
      if (unreviewed && state.decisions.has(id)) continue;
      order.push(id);
    }
    const how = $("filter-order").value;
    if (how === "least") order.sort((a, b) => list.confidence[a] - list.confidence[b] || a - b);
    else if (how === "most") order.sort((a, b) => list.confidence[b] - list.confidence[a] || a - b);
    state.order = order;
    const here = keep && current !== undefined ? order.indexOf(current) : -1;
    state.position = here >= 0 ? here : 0;
    render();
  }

  function move(step) {
    if (!state.order.length) return;
    state.position = Math.min(Math.max(state.position + step, 0), state.order.length - 1);
    render();
  }

  function goTo(id) {
    const at = state.order.indexOf(id);
    if (at >= 0) {
      state.position = at;
      render();
    } else {
      note("the face that was undone is hidden by the filters");
    }
  }

  // ---------------------------------------------------------------------------------------------- decisions

  function send(path, body, after) {
    state.inFlight += 1;
    showSave();
    const request = () => api(path, body).then((reply) => {
      state.inFlight -= 1;
      state.acked += 1;
      state.error = "";
      received(reply);
      if (after) after(reply);
    }, (error) => {
      state.inFlight -= 1;
      state.error = error.message;
      if (after) after(null);
    }).finally(() => { render(); showSave(); });
    send.chain = (send.chain || Promise.resolve()).then(request);
  }

  function received(reply) {
    const expected = reply.id === null ? state.seq : state.seq + 1;
    if (reply.seq !== expected) resync();  // another tab decided too: take the server's state
    state.seq = Math.max(state.seq, reply.seq);
    if (reply.id !== null && reply.id !== undefined) {
      if (reply.decision) state.decisions.set(reply.id, reply.decision);
      else state.decisions.delete(reply.id);
    }
    state.counts = reply.counts;
  }

  async function resync() {
    try {
      const fresh = await api("api/state");
      if (fresh.seq < state.seq) return;
      state.decisions = new Map(Object.entries(fresh.decisions).map(([id, value]) => [Number(id), value]));
      state.seq = fresh.seq;
      state.counts = fresh.counts;
      render();
    } catch (error) {
      state.error = error.message;
      showSave();
    }
  }

  function decide(decision, action) {
    const id = currentId();
    if (id === undefined) return;
    state.pending.set(id, decision);
    send("api/decide", { id, decision, action }, () => { state.pending.delete(id); });
    move(1);
  }

  function undo() {
    send("api/undo", {}, (reply) => {
      if (!reply) return;
      if (reply.id === null) note("nothing to undo");
      else goTo(reply.id);
    });
  }

  function showSave() {
    const status = $("save-status");
    status.dataset.acked = String(state.acked);
    if (state.inFlight > 0) {
      status.dataset.state = "saving";
      status.textContent = "saving…";
    } else if (state.error) {
      status.dataset.state = "error";
      status.textContent = `NOT saved: ${state.error}`;
    } else if (state.acked > 0) {
      status.dataset.state = "saved";
      status.textContent = `saved to ${state.list.review_file}`;
    } else {
      status.dataset.state = "idle";
      status.textContent = state.seq ? `${state.seq} earlier records in ${state.list.review_file}` : "no decisions yet";
    }
  }

  let noteTimer = 0;
  function note(text) {
    const status = $("save-status");
    status.textContent = text;
    clearTimeout(noteTimer);
    noteTimer = setTimeout(showSave, 1500);
  }

  // ---------------------------------------------------------------------------------------------- drawing

  function render() {
    if (!state.list) return;
    const counts = state.counts;
    $("count-reviewed").textContent = counts.reviewed.toLocaleString();
    $("count-changed").textContent = counts.changed.toLocaleString();
    $("count-left").textContent = counts.left.toLocaleString();
    $("count-items").textContent = counts.items.toLocaleString();
    $("position").textContent = state.order.length
      ? `${(state.position + 1).toLocaleString()} of ${state.order.length.toLocaleString()} shown`
      : "0 shown";
    const id = currentId();
    $("empty").hidden = id !== undefined;
    $("current").hidden = id === undefined;
    $("actions").hidden = id === undefined;
    if (id !== undefined) drawCurrent(id);
    drawStrip();
    prefetch();
  }

  function describe(id) {
    const list = items();
    const name = state.list.sources[list.source[id]];
    if (list.first[id] < 0) return { name, what: `photo, face ${list.face[id]}` };
    const frames = list.first[id] === list.last[id] ? `frame ${list.first[id]}`
      : `frames ${list.first[id]}–${list.last[id]}`;
    const rows = list.rows[id];
    return { name, what: `video, track ${list.track[id]}, ${frames} (${rows} analysed frame${rows === 1 ? "" : "s"})` };
  }

  function drawCurrent(id) {
    const list = items();
    const detail = state.details.get(id);
    if (!detail) loadDetail(id);
    const frames = $("frames");
    if (frames.dataset.id !== String(id)) {
      frames.dataset.id = String(id);
      frames.classList.toggle("segment", shownCount(id) > 1);  // three frames side by side: a little smaller
      frames.replaceChildren();
      for (let k = 0; k < shownCount(id); k += 1) {
        const figure = element("figure", {}, element("img", { alt: "face", src: cropUrl(id, k) }),
          element("figcaption", { text: "\u00a0" }));
        figure.querySelector("img").addEventListener("error", () => {
          figure.classList.add("failed");
          figure.querySelector("figcaption").textContent = "could not cut this face from its source (the " +
            "terminal running fer-batch review says why)";
        });
        frames.append(figure);
      }
    }
    if (detail) {
      frames.querySelectorAll("figure").forEach((figure, k) => {
        const shown = detail.shown[k];
        if (!shown || figure.classList.contains("failed")) return;
        figure.querySelector("figcaption").textContent = shown.frame === null ? `confidence ${percent(shown.confidence)}`
          : `frame ${shown.frame} · ${shown.time_s.toFixed(2)} s · ${emotionName(list.emotion[id])} ` +
            `${percent(shown.probabilities[list.emotion[id]])}`;
      });
    }
    const { name, what } = describe(id);
    $("where").replaceChildren(element("b", { text: name }), element("br"), element("span", { class: "muted", text: what }));
    const model = emotionName(list.emotion[id]);
    $("model").replaceChildren(
      "model: ", element("span", { class: "dot", style: { background: state.list.colors[list.emotion[id]] } }),
      element("span", { class: "label", text: model }),
      ` ${percent(list.confidence[id])}${list.first[id] < 0 ? "" : " (mean over the segment)"}`);
    const decided = state.decisions.get(id);
    const pending = state.pending.get(id);
    const decision = $("decision");
    if (pending !== undefined) {
      decision.dataset.state = "pending";
      decision.textContent = `saving: ${label(pending)}…`;
    } else if (decided !== undefined) {
      decision.dataset.state = "person";
      decision.textContent = `your decision: ${label(decided)}${decided === model ? " (the model's label)" : " (changed)"}`;
    } else {
      decision.dataset.state = "none";
      decision.textContent = "not reviewed yet";
    }
    drawBars(id, detail);
    document.querySelectorAll("#emotion-buttons button").forEach((button, index) => {
      button.classList.toggle("model", index === list.emotion[id]);
      button.classList.toggle("chosen", decided === emotionName(index));
    });
    $("button-not-a-face").classList.toggle("chosen", decided === "not_a_face");
  }

  const label = (decision) => (decision === "not_a_face" ? "not a face" : decision);

  function drawBars(id, detail) {
    const bars = $("bars");
    bars.replaceChildren();
    if (!detail) return;
    const top = items().emotion[id];
    detail.probabilities.forEach((probability, index) => {
      const fill = element("div", { class: "fill", style: { width: `${(100 * probability).toFixed(1)}%`,
        background: state.list.colors[index] } });
      bars.append(element("tr", { class: index === top ? "top" : "" },
        element("td", { class: "key", text: String(index + 1) }),
        element("td", { text: emotionName(index) }),
        element("td", {}, element("div", { class: "track" }, fill)),
        element("td", { class: "value", text: percent(probability) })));
    });
  }

  function drawStrip() {
    const strip = $("strip");
    strip.replaceChildren();
    const start = Math.max(0, state.position - STRIP_BEFORE);
    const stop = Math.min(state.order.length, state.position + STRIP_AFTER + 1);
    for (let at = start; at < stop; at += 1) {
      const id = state.order[at];
      const decided = state.decisions.get(id);
      const text = decided === undefined ? emotionName(items().emotion[id]) : `✓ ${label(decided)}`;
      const entry = element("li", { class: `${at === state.position ? "here" : ""} ${decided ? "done" : ""}`,
        title: describe(id).name },
        element("img", { alt: "", loading: "lazy", src: cropUrl(id, 0) }), element("span", { text }));
      entry.addEventListener("click", () => { state.position = at; render(); });
      strip.append(entry);
    }
  }

  function prefetch() {
    for (let at = state.position + 1; at <= state.position + PREFETCH && at < state.order.length; at += 1) {
      const id = state.order[at];
      for (let k = 0; k < shownCount(id); k += 1) new Image().src = cropUrl(id, k);
      if (!state.details.has(id)) loadDetail(id);
    }
  }

  const loading = new Set();
  async function loadDetail(id) {
    if (loading.has(id)) return;
    loading.add(id);
    try {
      const detail = await api(`api/item?id=${id}`);
      state.details.set(id, detail);
      if (state.details.size > DETAILS_KEPT) state.details.delete(state.details.keys().next().value);
      if (currentId() === id) drawCurrent(id);
    } catch (error) {
      state.error = error.message;
      showSave();
    } finally {
      loading.delete(id);
    }
  }

  // ---------------------------------------------------------------------------------------------- input

  function onKey(event) {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) {
      if (event.key === "Escape" || event.key === "Enter") target.blur();
      return;
    }
    const key = event.key.toLowerCase();
    if ((event.ctrlKey || event.metaKey) && key === "z") {
      event.preventDefault();
      undo();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const id = currentId();
    let handled = true;
    if (key >= "1" && key <= "7" && key.length === 1) decide(emotionName(Number(key) - 1), "choose");
    else if (key === "a" && id !== undefined) decide(emotionName(items().emotion[id]), "accept");
    else if (key === "x") decide("not_a_face", "not_a_face");
    else if (key === "z") undo();
    else if (key === "arrowright" || key === "arrowdown" || key === "j") move(1);
    else if (key === "arrowleft" || key === "arrowup" || key === "k") move(-1);
    else handled = false;
    if (handled) event.preventDefault();
  }

  function buildControls() {
    const select = $("filter-emotion");
    const buttons = $("emotion-buttons");
    state.list.emotions.forEach((name, index) => {
      select.append(element("option", { value: String(index), text: name }));
      const button = element("button", { type: "button", title: `key ${index + 1}` },
        element("kbd", { text: String(index + 1) }), ` ${name}`);
      button.addEventListener("click", () => decide(name, "choose"));
      buttons.append(button);
    });
    $("legend-emotions").replaceChildren(...state.list.emotions.map((name, index) =>
      element("span", { class: "pair", text: `${index + 1} ${name}` })));
    $("button-accept").addEventListener("click", () => {
      const id = currentId();
      if (id !== undefined) decide(emotionName(items().emotion[id]), "accept");
    });
    $("button-not-a-face").addEventListener("click", () => decide("not_a_face", "not_a_face"));
    $("button-undo").addEventListener("click", undo);
    $("button-previous").addEventListener("click", () => move(-1));
    $("button-next").addEventListener("click", () => move(1));
    for (const id of ["filter-emotion", "filter-source", "filter-track", "filter-min", "filter-max",
      "filter-unreviewed", "filter-order"]) {
      const control = $(id);
      control.addEventListener(id === "filter-source" ? "input" : "change", () => {
        applyFilters();
        if (control instanceof HTMLSelectElement || control.type === "checkbox") control.blur();  // keys review again
      });
    }
    $("filters").addEventListener("submit", (event) => event.preventDefault());
    document.addEventListener("keydown", onKey);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) resync(); });
  }

  async function start() {
    if (new URLSearchParams(window.location.search).has("token")) {
      window.history.replaceState(null, "", window.location.pathname);  // the cookie carries it from here
    }
    try {
      const [list, fresh] = await Promise.all([api("api/items"), api("api/state")]);
      list.items.confidence = Float64Array.from(list.items.confidence_e4, (value) => value / 1e4);
      state.list = list;
      state.decisions = new Map(Object.entries(fresh.decisions).map(([id, value]) => [Number(id), value]));
      state.seq = fresh.seq;
      state.counts = fresh.counts;
    } catch (error) {
      $("save-status").dataset.state = "error";
      $("save-status").textContent = `cannot load the review: ${error.message}`;
      return;
    }
    $("csv-name").textContent = state.list.csv;
    $("review-file").textContent = state.list.review_file;
    buildControls();
    showSave();
    applyFilters(false);
    document.body.dataset.readyMs = String(Math.round(performance.now()));  // since navigation (the benchmark)
    document.body.dataset.ready = "true";
  }

  start();
})();
