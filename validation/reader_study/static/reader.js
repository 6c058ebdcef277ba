// The reading page: one trial at a time, full-resolution viewer (zoom, pan, window/level),
// keyboard answers, time per case, resume, survey at the end. It knows only what the server
// sends: opaque trial ids and image URLs.
"use strict";

const base = location.pathname.replace(/\/+$/, "");
const $ = (id) => document.getElementById(id);
let state = null;
let answer = {};
let active = "judged";
let viewers = [];
let clock = { start: null, hiddenSince: null, hidden: 0 };
let sending = false;

const KEYS_SINGLE = [
  ["R / S", "real / synthetic"],
  ["1-3", "confidence (after the judgement)"],
  ["1-5", "BI-RADS (after the confidence)"],
  ["C, B", "then a digit: change confidence, BI-RADS"],
  ["Enter", "next case"],
  ["+ / -, wheel", "zoom"],
  ["arrows, drag", "pan"],
  ["[ ]  , .", "window width, level; right-drag"],
  ["0", "reset view"],
];
const KEYS_2AFC = [
  ["L / R", "the left / right image is synthetic"],
  ["1-3", "confidence"],
  ["Enter", "next pair"],
  ["+ / -, wheel", "zoom"],
  ["arrows, drag", "pan"],
  ["[ ]  , .", "window width, level; right-drag"],
  ["0", "reset view"],
];

async function api(path, body) {
  const opts = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const res = await fetch(base + path, opts);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || res.status + " " + res.statusText);
  return data;
}

function fields() {
  return state.mode === "single" ? ["judged", "confidence", "birads"] : ["judged", "confidence"];
}

function complete() {
  return fields().every((f) => answer[f] !== undefined);
}

function nextActive() {
  active = fields().find((f) => answer[f] === undefined) || null;
}

function render() {
  for (const btn of document.querySelectorAll("#panel button[data-field]")) {
    btn.classList.toggle("chosen", String(answer[btn.dataset.field]) === btn.dataset.value);
  }
  for (const f of ["judged", "confidence", "birads"]) {
    $("f-" + f).classList.toggle("active", active === f);
  }
  $("submit").disabled = !complete() || sending;
}

function choose(field, value) {
  if (field === "confidence" && !["1", "2", "3"].includes(String(value))) return;
  if (field === "birads" && !["1", "2", "3", "4", "5"].includes(String(value))) return;
  answer[field] = field === "judged" ? value : Number(value);
  nextActive();
  render();
}

function setupPanel() {
  const single = state.mode === "single";
  $("f-birads").hidden = !single;
  $("judged-legend").textContent = single ? "This image is" : "The synthetic image is";
  const choices = single ? [["real", "R", "Real"], ["synthetic", "S", "Synthetic"]] : [["left", "L", "Left"], ["right", "R", "Right"]];
  $("judged-choices").innerHTML = "";
  for (const [value, key, label] of choices) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.field = "judged";
    b.dataset.value = value;
    b.innerHTML = "<kbd>" + key + "</kbd> " + label;
    $("judged-choices").appendChild(b);
  }
  for (const btn of document.querySelectorAll("#panel button[data-field]")) {
    btn.onclick = () => choose(btn.dataset.field, btn.dataset.value);
  }
  $("key-list").innerHTML = "";
  for (const [k, what] of single ? KEYS_SINGLE : KEYS_2AFC) {
    const li = document.createElement("li");
    li.innerHTML = "<kbd>" + k + "</kbd> " + what;
    $("key-list").appendChild(li);
  }
}

// --- viewer ------------------------------------------------------------------------------------

class Viewer {
  constructor(container, url, onReady) {
    this.canvas = document.createElement("canvas");
    this.canvas.className = "viewer";
    container.appendChild(this.canvas);
    this.ctx = this.canvas.getContext("2d");
    this.img = new Image();
    this.img.onload = () => {
      this.prepare();
      onReady();
    };
    this.img.onerror = () => status("the image did not load; reload the page");
    this.img.src = url;
    this.drag = null;
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.offsetX, e.offsetY);
    });
    this.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    this.canvas.addEventListener("mousedown", (e) => {
      this.drag = { x: e.clientX, y: e.clientY, wl: e.button === 2 || e.shiftKey };
    });
    window.addEventListener("mouseup", () => (this.drag = null));
    window.addEventListener("mousemove", (e) => {
      if (!this.drag) return;
      const dx = e.clientX - this.drag.x, dy = e.clientY - this.drag.y;
      this.drag.x = e.clientX;
      this.drag.y = e.clientY;
      if (this.drag.wl) this.window(dx, -dy);
      else this.pan(dx, dy);
    });
  }

  prepare() {
    const w = this.img.naturalWidth, h = this.img.naturalHeight;
    this.source = document.createElement("canvas");
    this.source.width = w;
    this.source.height = h;
    const sctx = this.source.getContext("2d", { willReadFrequently: true });
    sctx.drawImage(this.img, 0, 0);
    this.pixels = sctx.getImageData(0, 0, w, h);
    this.grey = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) this.grey[i] = this.pixels.data[4 * i];
    this.reset();
  }

  reset() {
    this.level = 127.5;
    this.width = 255;
    this.fit();
    this.applyWindow();
  }

  fit() {
    const rect = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.max(1, Math.round(rect.width));
    this.canvas.height = Math.max(1, Math.round(rect.height));
    const s = Math.min(this.canvas.width / this.source.width, this.canvas.height / this.source.height);
    this.scale = s;
    this.tx = (this.canvas.width - this.source.width * s) / 2;
    this.ty = (this.canvas.height - this.source.height * s) / 2;
  }

  applyWindow() {
    const lo = this.level - this.width / 2, span = Math.max(1, this.width);
    const lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) lut[v] = ((v - lo) / span) * 255;
    const d = this.pixels.data, g = this.grey;
    for (let i = 0; i < g.length; i++) {
      const o = lut[g[i]];
      d[4 * i] = d[4 * i + 1] = d[4 * i + 2] = o;
    }
    this.source.getContext("2d").putImageData(this.pixels, 0, 0);
    this.draw();
  }

  draw() {
    const c = this.ctx;
    c.setTransform(1, 0, 0, 1, 0, 0);
    c.fillStyle = "#000";
    c.fillRect(0, 0, this.canvas.width, this.canvas.height);
    c.imageSmoothingEnabled = this.scale < 2;
    c.setTransform(this.scale, 0, 0, this.scale, this.tx, this.ty);
    c.drawImage(this.source, 0, 0);
    info();
  }

  zoomAt(f, x, y) {
    const s = Math.min(32, Math.max(0.05, this.scale * f));
    f = s / this.scale;
    this.tx = x - (x - this.tx) * f;
    this.ty = y - (y - this.ty) * f;
    this.scale = s;
    this.draw();
  }

  pan(dx, dy) {
    this.tx += dx;
    this.ty += dy;
    this.draw();
  }

  window(dw, dl) {
    this.width = Math.min(512, Math.max(1, this.width + dw));
    this.level = Math.min(255, Math.max(0, this.level + dl));
    this.applyWindow();
  }
}

function info() {
  const v = viewers[0];
  if (v && v.source) $("view-info").textContent = "zoom " + v.scale.toFixed(2) + "x · W " + Math.round(v.width) + " L " + Math.round(v.level);
}

function showTrial() {
  $("survey").hidden = true;
  $("done").hidden = true;
  $("reading").hidden = false;
  $("count").textContent = (state.mode === "single" ? "Case " : "Pair ") + (state.answered + 1) + " of " + state.total;
  $("bar").max = state.total;
  $("bar").value = state.answered;
  answer = {};
  active = "judged";
  $("viewers").innerHTML = "";
  $("viewers").className = state.trial.images.length > 1 ? "pair" : "single";
  let pending = state.trial.images.length;
  clock = { start: null, hiddenSince: null, hidden: 0 };
  viewers = state.trial.images.map(
    (url) =>
      new Viewer($("viewers"), url, () => {
        pending -= 1;
        if (pending === 0) {
          clock.start = performance.now();
          document.body.dataset.trial = state.trial.id; // what the page shows now (for tests)
        }
      })
  );
  render();
}

function seconds() {
  let hidden = clock.hidden;
  if (clock.hiddenSince !== null) hidden += performance.now() - clock.hiddenSince;
  return Math.max(0, (performance.now() - clock.start - hidden) / 1000);
}

document.addEventListener("visibilitychange", () => {
  if (document.hidden) clock.hiddenSince = performance.now();
  else if (clock.hiddenSince !== null) {
    clock.hidden += performance.now() - clock.hiddenSince;
    clock.hiddenSince = null;
  }
});

function status(text) {
  $("status").textContent = text || "";
}

async function submit() {
  if (!complete() || sending || clock.start === null) return;
  sending = true;
  render();
  const body = { trial_id: state.trial.id, judged: answer.judged, confidence: answer.confidence, seconds: seconds() };
  body.birads = state.mode === "single" ? answer.birads : null;
  try {
    state = await api("/answer", body);
    status("");
    route();
  } catch (err) {
    status("Not saved: " + err.message + ". Press Enter to try again.");
  } finally {
    sending = false;
    render();
  }
}

$("submit").onclick = submit;

document.addEventListener("keydown", (e) => {
  if ($("reading").hidden || e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  const single = state.mode === "single";
  const v = viewers;
  let handled = true;
  if (single && (k === "r" || k === "R")) choose("judged", "real");
  else if (single && (k === "s" || k === "S")) choose("judged", "synthetic");
  else if (!single && (k === "l" || k === "L")) choose("judged", "left");
  else if (!single && (k === "r" || k === "R")) choose("judged", "right");
  else if (k === "c" || k === "C") (active = "confidence"), render();
  else if (single && (k === "b" || k === "B")) (active = "birads"), render();
  else if (/^[1-5]$/.test(k) && (active === "confidence" || active === "birads")) choose(active, k);
  else if (k === "Enter") submit();
  else if (k === "+" || k === "=") v.forEach((x) => x.zoomAt(1.25, x.canvas.width / 2, x.canvas.height / 2));
  else if (k === "-") v.forEach((x) => x.zoomAt(0.8, x.canvas.width / 2, x.canvas.height / 2));
  else if (k === "0") v.forEach((x) => x.reset());
  else if (k === "ArrowLeft") v.forEach((x) => x.pan(40, 0));
  else if (k === "ArrowRight") v.forEach((x) => x.pan(-40, 0));
  else if (k === "ArrowUp") v.forEach((x) => x.pan(0, 40));
  else if (k === "ArrowDown") v.forEach((x) => x.pan(0, -40));
  else if (k === "[") v.forEach((x) => x.window(-10, 0));
  else if (k === "]") v.forEach((x) => x.window(10, 0));
  else if (k === ",") v.forEach((x) => x.window(0, -5));
  else if (k === ".") v.forEach((x) => x.window(0, 5));
  else handled = false;
  if (handled) e.preventDefault();
});

window.addEventListener("resize", () => viewers.forEach((x) => x.source && (x.fit(), x.draw())));

// --- survey ------------------------------------------------------------------------------------

async function showSurvey() {
  document.body.dataset.trial = "";
  $("reading").hidden = true;
  $("survey").hidden = false;
  $("count").textContent = "Survey";
  $("bar").value = $("bar").max;
  const survey = await api("/survey");
  $("survey-title").textContent = survey.title;
  $("survey-intro").textContent = survey.intro;
  const form = $("survey-form");
  form.innerHTML = "";
  survey.questions.forEach((q, n) => {
    const fs = document.createElement("fieldset");
    fs.dataset.question = q.id;
    const legend = document.createElement("legend");
    legend.textContent = n + 1 + ". " + q.text + (q.required ? " *" : "");
    fs.appendChild(legend);
    if (q.kind === "single" || q.kind === "multi") {
      q.options.forEach((opt) => {
        const label = document.createElement("label");
        const input = document.createElement("input");
        input.type = q.kind === "single" ? "radio" : "checkbox";
        input.name = q.id;
        input.value = opt;
        label.appendChild(input);
        label.appendChild(document.createTextNode(" " + opt));
        fs.appendChild(label);
      });
    } else {
      const input = document.createElement(q.kind === "text" ? "textarea" : "input");
      if (q.kind === "number") {
        input.type = "number";
        input.min = "0";
        input.step = "any";
      }
      input.name = q.id;
      fs.appendChild(input);
    }
    if (q.other) {
      const input = document.createElement("input");
      input.type = "text";
      input.name = q.id + ".other";
      input.placeholder = "Other (please specify)";
      fs.appendChild(input);
    }
    form.appendChild(fs);
  });
  const send = document.createElement("button");
  send.type = "submit";
  send.id = "survey-submit";
  send.textContent = "Send the survey";
  form.appendChild(send);
  form.onsubmit = async (e) => {
    e.preventDefault();
    const answers = {};
    for (const q of survey.questions) {
      if (q.kind === "multi") answers[q.id] = [...form.querySelectorAll(`input[name="${q.id}"]:checked`)].map((i) => i.value);
      else if (q.kind === "single") {
        const c = form.querySelector(`input[name="${q.id}"]:checked`);
        if (c) answers[q.id] = c.value;
      } else if (form.elements[q.id].value !== "") answers[q.id] = form.elements[q.id].value;
      if (q.other && form.elements[q.id + ".other"].value) answers[q.id + ".other"] = form.elements[q.id + ".other"].value;
    }
    try {
      state = await api("/survey", { answers });
      route();
    } catch (err) {
      alert("The survey was not saved: " + err.message);
    }
  };
}

function route() {
  if (state.trial) showTrial();
  else if (!state.survey_done) showSurvey();
  else {
    $("reading").hidden = true;
    $("survey").hidden = true;
    $("done").hidden = false;
    $("count").textContent = "Done";
    document.body.dataset.trial = "";
  }
}

api("/state")
  .then((s) => {
    state = s;
    setupPanel();
    route();
  })
  .catch((err) => status("Cannot start: " + err.message));
