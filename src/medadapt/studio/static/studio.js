// medadapt studio page: NiiVue shows the case; boxes and clicks go to the studio, which answers with
// the new label volume. Plain ES module, no build step.
import { Niivue, NVImage, DRAG_MODE, SLICE_TYPE } from "./vendor/niivue/niivue.js";

const $ = (id) => document.getElementById(id);
const PLANES = { axial: SLICE_TYPE.AXIAL, coronal: SLICE_TYPE.CORONAL, sagittal: SLICE_TYPE.SAGITTAL };
const COLOURS = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [70, 240, 240]];

// The page's state; window.studio lets a console (or the end-to-end test) see what is shown.
const state = { key: null, info: null, classes: {}, busy: false, mask: null };
window.studio = state;

const nv = new Niivue({
  backColor: [0.08, 0.1, 0.13, 1], crosshairColor: [1, 1, 0, 0.5], crosshairWidth: 0.25, selectionBoxColor: [1, 1, 0, 0.4],
  dragAndDropEnabled: false, show3Dcrosshair: false, logLevel: "error",
});
state.nv = nv;

const caseUrl = (suffix = "") => `/api/cases/${encodeURIComponent(state.key)}${suffix}`;

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, options = {}) {
  const res = await fetch(path, options);
  if (!res.ok) {
    let msg = `${res.status} ${res.statusText}`;
    try { msg = (await res.json()).error || msg; } catch { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

async function postJson(path, body) {
  return (await api(path, { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body ?? {}) })).json();
}

// One request at a time: the model answers interactions in order.
async function busy(label, work) {
  if (state.busy) return;
  state.busy = true;
  say(label);
  try {
    await work();
  } catch (err) {
    say(err.message, true);
  } finally {
    state.busy = false;
    updateButtons();
  }
}

const tool = () => document.querySelector("input[name=tool]:checked").value;
const classValue = () => Number($("class").value);

function updateButtons() {
  const s = state.info;
  $("undo").disabled = !s?.can_undo;
  $("redo").disabled = !s?.can_redo;
  $("save").disabled = !state.key;
}

const PAINT = ["brush", "eraser"];

function applyTool() {
  const primary = tool() === "box" ? DRAG_MODE.callbackOnly : PAINT.includes(tool()) ? DRAG_MODE.none : DRAG_MODE.crosshair;
  nv.setMouseEventConfig({ leftButton: { primary }, rightButton: DRAG_MODE.contrast, centerButton: DRAG_MODE.pan });
}

function applyLayout() {
  if (!state.info) return;
  nv.setSliceType($("layout").value === "plane" ? PLANES[state.info.plane] : SLICE_TYPE.MULTIPLANAR);
}

async function refreshCases() {
  const cases = await (await api("/api/cases")).json();
  const list = $("case-list");
  list.replaceChildren(...cases.map((c) => {
    const li = document.createElement("li");
    li.dataset.key = c.key;
    li.className = c.key === state.key ? "open" : "";
    const button = document.createElement("button");
    const badge = document.createElement("span");
    badge.className = `badge ${c.status}`;
    badge.textContent = c.status + (c.unsaved ? " *" : "");
    button.append(c.key, badge);
    button.addEventListener("click", () => openCase(c.key));
    li.append(button);
    return li;
  }));
}

function labelColormap() {
  const top = Math.max(1, ...Object.keys(state.classes).map(Number));
  const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: ["background"] };
  for (let v = 1; v <= top; v++) {
    const [r, g, b] = COLOURS[(v - 1) % COLOURS.length];
    cm.R.push(r); cm.G.push(g); cm.B.push(b); cm.A.push(255); cm.I.push(v);
    cm.labels.push(state.classes[v] ?? `class ${v}`);
  }
  return cm;
}

// The label volume the studio holds for the case (saved label + this session's masks) as the overlay.
async function loadMask() {
  const res = await api(caseUrl("/mask"));
  await showOverlay(await res.arrayBuffer());
  state.mask = { version: Number(res.headers.get("X-Mask-Version")), voxels: Number(res.headers.get("X-Mask-Voxels")) };
  state.compare = null;
  $("compare").value = "";
}

async function showOverlay(bytes) {
  const url = URL.createObjectURL(new Blob([bytes]));
  try {
    const mask = await NVImage.loadFromUrl({ url, name: "mask.nii.gz" });
    mask.setColormapLabel(labelColormap());
    mask.opacity = Number($("opacity").value);
    while (nv.volumes.length > 1) nv.removeVolumeByIndex(1);
    nv.addVolume(mask);
  } finally {
    URL.revokeObjectURL(url);
  }
}

// Compare: the overlay shows another adapter's answer to the same interactions instead of the case's masks.
async function showCompare() {
  const adapter = $("compare").value;
  if (!adapter || !state.key) { state.compare = null; if (state.key) await loadMask(); return; }
  await busy(`${adapter === "zero-shot" ? "the zero-shot model" : `adapter ${adapter}`} on this case…`, async () => {
    const res = await api(caseUrl(`/compare?adapter=${encodeURIComponent(adapter)}`));
    await showOverlay(await res.arrayBuffer());
    state.compare = { adapter, voxels: Number(res.headers.get("X-Mask-Voxels")),
      dice: Number(res.headers.get("X-Agreement-Dice")) };
    say(`showing ${adapter === "zero-shot" ? "the zero-shot model" : `adapter ${adapter}`}: agreement with the ` +
      `current masks DSC ${state.compare.dice.toFixed(3)} (compare: off to edit)`);
  });
}
$("compare").addEventListener("change", () => showCompare().catch((err) => say(err.message, true)));
let lastCompare = "";
document.addEventListener("keydown", (e) => {
  if (e.key !== "c" || e.ctrlKey || e.metaKey || e.target.tagName === "INPUT" || $("compare-pick").hidden) return;
  const now = $("compare").value;
  if (now) lastCompare = now;
  $("compare").value = now ? "" : lastCompare || $("compare").options[1]?.value || "";
  showCompare().catch((err) => say(err.message, true));
});

async function openCase(key) {
  await busy(`opening ${key}…`, async () => {
    state.key = key;
    state.info = await (await api(caseUrl())).json();
    await nv.loadVolumes([{ url: caseUrl("/image"), name: state.info.image }]);
    $("wmin").value = nv.volumes[0].cal_min.toPrecision(4);
    $("wmax").value = nv.volumes[0].cal_max.toPrecision(4);
    await loadMask();
    if (state.info.is_2d) $("layout").value = "plane";  // one slice: the other planes are lines
    applyLayout();
    $("hint").textContent = `Draw boxes on the ${state.info.plane} view` +
      (state.info.labelled ? " (this case has a saved label)." : ".");
    await refreshCases();
    say(`${key}: ${state.info.shape.join(" × ")}`);
  });
}

async function interact(label, path, body) {
  await busy(label, async () => {
    const t0 = performance.now();
    Object.assign(state.info, await postJson(caseUrl(path), body));
    await loadMask();
    await refreshCases();
    say(`${label.replace("…", "")}: ${state.mask.voxels} labelled voxels (${Math.round(performance.now() - t0)} ms)`);
  });
}

nv.onDragRelease = (p) => {
  if (!state.key || tool() !== "box" || p.tileIdx < 0) return;
  if (p.axCorSag !== PLANES[state.info.plane]) {
    say(`draw boxes on the ${state.info.plane} view`, true);
    return;
  }
  interact("box…", "/box", {
    corner0: Array.from(p.mmStart).slice(0, 3), corner1: Array.from(p.mmEnd).slice(0, 3), space: "mm",
    value: classValue(), depth: Number($("depth").value) || 0,
  });
};

nv.onIntensityChange = (vol) => {
  if (vol !== nv.volumes[0]) return;
  $("wmin").value = vol.cal_min.toPrecision(4);
  $("wmax").value = vol.cal_max.toPrecision(4);
};

// Canvas pixels of a pointer event → world mm (null outside the image) and the plane of its tile.
function pointerMm(e) {
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  const frac = nv.canvasPos2frac([e.offsetX * dpr, e.offsetY * dpr]);
  if (frac[0] < 0) return null;
  return Array.from(nv.frac2mm(frac)).slice(0, 3);
}

function tilePlane(e) {
  const dpr = nv.uiData.dpr || window.devicePixelRatio || 1;
  const tile = nv.tileIndex(e.offsetX * dpr, e.offsetY * dpr);
  return tile < 0 ? -1 : nv.screenSlices[tile].axCorSag;
}

// A click (no drag) with a click tool: the point under the pointer. A brush / eraser stroke: its points,
// sent when the button is released (a disk of the brush size around each, on the drawing plane).
let pressed = null;
let stroke = null;
$("gl").addEventListener("pointerdown", (e) => {
  pressed = e.button === 0 ? [e.offsetX, e.offsetY] : null;
  stroke = null;
  if (!pressed || !state.key || !PAINT.includes(tool())) return;
  if (tilePlane(e) !== PLANES[state.info.plane]) {
    say(`paint on the ${state.info.plane} view`, true);
    return;
  }
  stroke = [];
  const mm = pointerMm(e);
  if (mm) stroke.push(mm);
});
$("gl").addEventListener("pointermove", (e) => {
  if (!stroke) return;
  const mm = pointerMm(e);
  if (mm) stroke.push(mm);
});
$("gl").addEventListener("pointerup", (e) => {
  const start = pressed;
  pressed = null;
  if (stroke) {
    const points = stroke;
    stroke = null;
    if (!points.length) return;
    const erase = tool() === "eraser";
    interact(erase ? "eraser…" : "brush…", "/paint", {
      points, space: "mm", value: erase ? 0 : classValue(), radius: Number($("radius").value) || 0,
    });
    return;
  }
  if (!state.key || !start || e.button !== 0 || !["positive", "negative"].includes(tool())) return;
  if (Math.hypot(e.offsetX - start[0], e.offsetY - start[1]) > 3) return;
  const mm = pointerMm(e);
  if (!mm) return;
  const positive = tool() === "positive";
  interact(positive ? "+ click…" : "− click…", "/click", { point: mm, space: "mm", positive, value: classValue() });
});

// The model in use and the background fit (adaptation in the loop), polled while a fit runs.
let polling = null;
async function showAdapter() {
  const a = await (await api("/api/adapter")).json();
  let text = `model: ${a.adapter ?? "zero-shot"}`;
  if (a.state === "fitting") text += a.running ? ` · fitting adapter ${a.running.adapter} on ${a.running.cases} saved cases: ` +
    (a.running.phase === "training" ? `step ${a.running.step}/${a.running.steps}` +
      (a.running.val_dsc != null ? `, validation DSC ${a.running.val_dsc.toFixed(3)}` : "") : "preparing…") : " · fitting…";
  else if (a.last?.error) text += ` · the last fit failed: ${a.last.error}`;
  else if (a.last) text += ` · fit ${a.last.adapter}: ${a.last.cases} cases, ${a.last.seconds} s` +
    (a.last.val_dsc != null ? `, validation DSC ${a.last.val_dsc.toFixed(3)}` : "");
  $("adapter").textContent = text;
  if (a.adapter !== state.adapter) {  // another model: its own suggestion
    state.adapter = a.adapter;
    showSuggestion().catch(() => {});
  }
  if (a.state !== "off") {  // the finished adapters, to go back to one (or to the zero-shot model) and pin it
    $("model-pick").hidden = false;
    const options = [new Option("zero-shot", ""), ...a.adapters.map((x) => new Option(
      `adapter ${x.adapter} (${x.cases} cases${x.val_dsc != null ? `, DSC ${x.val_dsc.toFixed(3)}` : ""})`, x.adapter))];
    $("model").replaceChildren(...options);
    $("compare-pick").hidden = false;
    const keep = $("compare").value;
    $("compare").replaceChildren(new Option("off", ""), new Option("zero-shot", "zero-shot"),
      ...a.adapters.map((x) => new Option(`adapter ${x.adapter}`, x.adapter)));
    $("compare").value = [...$("compare").options].some((o) => o.value === keep) ? keep : "";
    $("model").value = a.current ?? "";
    $("pin").checked = a.pinned;
  }
  const active = a.state === "fitting";
  if (active && !polling) polling = setInterval(() => showAdapter().catch(() => {}), 2000);
  if (!active && polling) { clearInterval(polling); polling = null; }
}

// The "next case" suggestion (least certain unlabelled case), polled while its scores are computed.
let suggestPolling = null;
async function showSuggestion() {
  const s = await (await api("/api/suggest")).json();
  state.suggestion = s;
  $("next").disabled = !s.case;
  let text = s.case ? `${s.case}` : "every case is labelled";
  if (s.method === "entropy") text += ` (entropy ${s.score.toFixed(3)})`;
  else if (s.case) text += " (list order)";
  if (!s.complete) text += ` · scoring ${s.scored}/${s.total}…`;
  $("suggestion").textContent = text;
  if (!s.complete && !suggestPolling) suggestPolling = setInterval(() => showSuggestion().catch(() => {}), 2000);
  if (s.complete && suggestPolling) { clearInterval(suggestPolling); suggestPolling = null; }
}
$("next").addEventListener("click", () => { if (state.suggestion?.case) openCase(state.suggestion.case); });

async function selectModel() {
  await busy("switching the model…", async () => {
    await postJson("/api/adapter", { adapter: $("model").value || null, pin: $("pin").checked });
    await showAdapter();
    say("model switched: cases opened or saved from now on use it");
  });
}
$("model").addEventListener("change", selectModel);
$("pin").addEventListener("change", selectModel);

$("undo").addEventListener("click", () => interact("undo…", "/undo"));
$("redo").addEventListener("click", () => interact("redo…", "/redo"));
$("save").addEventListener("click", () => busy("saving…", async () => {
  const res = await (await api(caseUrl("/label"), { method: "PUT" })).json();
  Object.assign(state.info, res);
  state.saved = res.saved;
  await loadMask();
  await refreshCases();
  say(`saved ${res.saved} (${res.voxels} labelled voxels)` + (res.warning ? `: ${res.warning}` : ""), Boolean(res.warning));
  await showAdapter();
  await showSuggestion();
}));
for (const input of document.querySelectorAll("input[name=tool]")) input.addEventListener("change", applyTool);
$("layout").addEventListener("change", applyLayout);
$("opacity").addEventListener("input", () => { if (nv.volumes.length > 1) nv.setOpacity(1, Number($("opacity").value)); });
for (const id of ["wmin", "wmax"]) {
  $(id).addEventListener("change", () => {
    if (!nv.volumes.length) return;
    nv.volumes[0].cal_min = Number($("wmin").value);
    nv.volumes[0].cal_max = Number($("wmax").value);
    nv.updateGLVolume();
  });
}
document.addEventListener("keydown", (e) => {
  if (!(e.ctrlKey || e.metaKey) || !state.key) return;
  if (e.key === "z") { e.preventDefault(); interact("undo…", "/undo"); }
  if (e.key === "y") { e.preventDefault(); interact("redo…", "/redo"); }
  if (e.key === "s") { e.preventDefault(); $("save").click(); }
});

async function start() {
  await nv.attachTo("gl");
  applyTool();
  const about = await (await api("/api/studio")).json();
  state.classes = about.classes;
  $("dataset").textContent = `${about.name} · ${about.cases} cases` + (about.adapter ? ` · adapter ${about.adapter}` : "");
  $("class").replaceChildren(...Object.entries(about.classes).map(([v, name]) => new Option(`${v} ${name}`, v)));
  await refreshCases();
  state.adapter = about.adapter;
  await showAdapter();
  await showSuggestion();
  say("pick a case");
  state.ready = true;
}

start().catch((err) => say(err.message, true));
