// The page: a seeded grid of samples, latent directions on the chosen one, interpolation between two,
// the classifier's label on each, "show me a ...", PNG download, the model card and the runtime.
// Everything runs in the browser; the server only hands out files (dcgan web serve).
import { draw, gridCanvas, rgba } from "./draw.mjs";
import { lerp, moved, rng, sample, slerp } from "./latent.mjs";
import { load, runtime } from "./models.mjs";

const $ = (id) => document.getElementById(id);
const FRAMES = 8; // interpolation frames, both ends included
const MAX_TRIES = 40; // batches of 16 before giving up

const state = { card: null, model: null, base: [], amounts: [], z: [], images: [], labels: [], selected: 0, ends: [null, null] };

function settings() {
  const query = new URLSearchParams(location.search);
  const number = (name, fallback) => (query.has(name) && query.get(name) !== "" ? Number(query.get(name)) : fallback);
  const truncation = number("truncation", null);
  return {
    seed: Math.max(0, Math.floor(number("seed", 0))),
    count: Math.min(64, Math.max(1, Math.floor(number("n", 16)))),
    truncation: truncation > 0 ? truncation : null,
  };
}

function share({ seed, count, truncation }) {
  const query = new URLSearchParams({ seed, n: count });
  if (truncation) query.set("truncation", truncation);
  history.replaceState(null, "", `?${query}`);
}

// Run the generator and the classifier on a list of latents; returns [pixels, label] per latent.
async function render(latents) {
  const { z_dim: zDim, channels, image_size: size, classes } = state.card;
  const z = new Float32Array(latents.length * zDim);
  latents.forEach((latent, i) => z.set(latent, i * zDim));
  const images = await state.model.generate(z, latents.length);
  const probabilities = await state.model.classify(images, latents.length);
  return latents.map((_, i) => {
    const p = probabilities.slice(i * classes.length, (i + 1) * classes.length);
    const best = p.indexOf(Math.max(...p));
    const per = channels * size * size;
    return { images: images.slice(i * per, (i + 1) * per), pixels: rgba(images, i, channels, size), label: best, p: p[best] };
  });
}

function caption(result) {
  return state.card.classifier_task === "labels" ? `${state.card.classes[result.label]} · ${Math.round(result.p * 100)}%` : "";
}

async function drawGrid() {
  const { seed, count, truncation } = settings();
  const zDim = state.card.z_dim;
  const batch = sample(rng(seed), count, zDim, truncation);
  state.base = Array.from({ length: count }, (_, i) => batch.slice(i * zDim, (i + 1) * zDim));
  state.amounts = state.base.map(() => state.card.latent.directions.map(() => 0));
  state.z = state.base.map((z) => Float32Array.from(z));
  const results = await render(state.z);
  state.images = results.map((r) => r.images);
  state.labels = results.map((r) => ({ label: r.label, p: r.p }));
  const grid = $("grid");
  grid.replaceChildren(...results.map((result, i) => {
    const cell = document.createElement("figure");
    cell.className = "cell";
    cell.dataset.index = i;
    const canvas = document.createElement("canvas");
    draw(canvas, result.pixels, state.card.image_size);
    const text = document.createElement("figcaption");
    text.textContent = caption(result);
    cell.append(canvas, text);
    cell.addEventListener("click", () => select(i));
    return cell;
  }));
  state.ends = [null, null];
  select(Math.min(state.selected, count - 1));
  await drawStrip();
}

function select(i) {
  state.selected = i;
  document.querySelectorAll(".cell").forEach((cell) => cell.classList.toggle("selected", Number(cell.dataset.index) === i));
  $("selected-name").textContent = `(sample ${i + 1})`;
  state.card.latent.directions.forEach((_, k) => {
    $(`direction-${k}`).value = state.amounts[i][k];
    $(`direction-${k}-value`).textContent = state.amounts[i][k].toFixed(1);
  });
}

// Move the chosen sample along direction k; only its cell is generated and drawn again.
async function move(k, amount) {
  const i = state.selected;
  state.amounts[i][k] = amount;
  $(`direction-${k}-value`).textContent = amount.toFixed(1);
  state.z[i] = moved(state.base[i], state.card.latent.directions.map((d) => d.z), state.amounts[i]);
  const [result] = await render([state.z[i]]);
  state.images[i] = result.images;
  state.labels[i] = { label: result.label, p: result.p };
  const cell = document.querySelector(`.cell[data-index="${i}"]`);
  draw(cell.querySelector("canvas"), result.pixels, state.card.image_size);
  cell.querySelector("figcaption").textContent = caption(result);
}

function buildSliders() {
  $("sliders").replaceChildren(...state.card.latent.directions.map((direction, k) => {
    const row = document.createElement("label");
    row.className = "slider";
    row.title = `${(direction.explained_variance * 100).toFixed(1)}% of the first layer's variance`;
    const input = Object.assign(document.createElement("input"), { type: "range", min: -3, max: 3, step: 0.1, value: 0, id: `direction-${k}` });
    const value = Object.assign(document.createElement("output"), { id: `direction-${k}-value`, textContent: "0.0" });
    input.addEventListener("input", () => run(() => move(k, Number(input.value))));
    row.append(`PC ${k + 1}`, input, value);
    return row;
  }));
}

async function drawStrip() {
  const [a, b] = state.ends;
  $("ends").textContent = a === null || b === null ? "(pick A and B)" : `(sample ${a + 1} to sample ${b + 1})`;
  if (a === null || b === null) return $("strip").replaceChildren();
  const path = document.querySelector('input[name="path"]:checked').value === "linear" ? lerp : slerp;
  const frames = Array.from({ length: FRAMES }, (_, f) => path(state.z[a], state.z[b], f / (FRAMES - 1)));
  const results = await render(frames);
  state.strip = { z: frames, images: results.map((r) => r.images) };
  $("strip").replaceChildren(...results.map((result) => {
    const canvas = document.createElement("canvas");
    draw(canvas, result.pixels, state.card.image_size);
    canvas.title = caption(result);
    return canvas;
  }));
}

// Sample until the classifier gives the wanted class at least the chosen probability.
async function showMe() {
  const wanted = Number($("wanted").value);
  const sure = Number($("sure").value);
  const { seed } = settings();
  const uniform = rng(seed * 1000003 + wanted + 1);
  const zDim = state.card.z_dim;
  for (let attempt = 1; attempt <= MAX_TRIES; attempt++) {
    const batch = sample(uniform, 16, zDim);
    const latents = Array.from({ length: 16 }, (_, i) => batch.slice(i * zDim, (i + 1) * zDim));
    const results = await render(latents);
    const hit = results.findIndex((r) => r.label === wanted && r.p >= sure);
    if (hit >= 0) {
      draw($("found-image"), results[hit].pixels, state.card.image_size);
      $("found-image").hidden = false;
      state.found = { z: latents[hit], label: wanted, p: results[hit].p };
      $("found-text").textContent = `${state.card.classes[wanted]} with probability ${results[hit].p.toFixed(3)}, after ${(attempt - 1) * 16 + hit + 1} samples`;
      return;
    }
  }
  state.found = null;
  $("found-image").hidden = true;
  $("found-text").textContent = `no sample the classifier calls ${state.card.classes[wanted]} with probability >= ${sure} in ${MAX_TRIES * 16} tries`;
}

function download() {
  const { image_size: size, channels } = state.card;
  const pixels = state.images.map((images) => rgba(images, 0, channels, size));
  gridCanvas(pixels, size).toBlob((blob) => {
    const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: `dcgan-seed-${settings().seed}.png` });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}

function describe(list, entries) {
  list.replaceChildren(...entries.flatMap(([term, value]) => {
    const dt = Object.assign(document.createElement("dt"), { textContent: term });
    const dd = Object.assign(document.createElement("dd"), { textContent: value });
    return [dt, dd];
  }));
}

function showCard(card) {
  const figures = Object.entries(card.metrics).map(([key, value]) => [key, Number.isInteger(value) ? String(value) : value.toPrecision(4)]);
  describe($("card"), [
    ["model", card.registered_model ? `${card.registered_model} version ${card.version}` : card.model],
    ["aliases", (card.aliases ?? []).join(", ") || "none"],
    ...figures,
    ["data set", `${card.dataset} (${card.classes.length} classes)`],
    ["image", `${card.channels} x ${card.image_size} x ${card.image_size}`],
    ["z", `${card.z_dim} x 1 x 1, standard normal`],
    ["MLflow run", card.mlflow_run_id ?? "?"],
    ["git commit", card.git_commit ?? "?"],
    ["ONNX sha256", card.files.generator.sha256],
  ]);
}

function showRuntime() {
  const t = runtime.timings;
  const ms = (value) => (value === undefined ? "–" : `${value.toFixed(0)} ms`);
  describe($("runtime"), [
    ["onnxruntime-web", runtime.version],
    ["backend", runtime.backend],
    ["threads", String(runtime.threads)],
    ["sessions created", ms(t.session_ms)],
    ["last generation", ms(t.generate_ms)],
    ["last classification", ms(t.classify_ms)],
  ]);
}

// Every action: one at a time, its failure shown on the page (and the console).
let busy = Promise.resolve();
function run(action) {
  busy = busy.then(action).then(showRuntime, (error) => {
    $("status").textContent = `Error: ${error.message ?? error}`;
    $("status").classList.add("error");
    console.error(error);
  });
  return busy;
}

async function start() {
  const response = await fetch("card.json", { cache: "no-store" });
  state.card = await response.json();
  state.model = await load(state.card);
  const { seed, count, truncation } = settings();
  Object.assign($("seed"), { value: seed });
  Object.assign($("count"), { value: count });
  $("truncation").value = truncation ?? "";
  buildSliders();
  if (state.card.classifier_task === "labels") {
    $("wanted").replaceChildren(...state.card.classes.map((name, i) => Object.assign(document.createElement("option"), { value: i, textContent: name })));
  } else {
    $("find").hidden = true;
  }
  showCard(state.card);

  const regrid = () => {
    share({ seed: Number($("seed").value), count: Number($("count").value), truncation: Number($("truncation").value) || null });
    return run(drawGrid);
  };
  $("grid-controls").addEventListener("change", regrid);
  $("new-seed").addEventListener("click", () => { $("seed").value = Number($("seed").value) + 1; regrid(); });
  $("download").addEventListener("click", download);
  $("reset").addEventListener("click", () => run(async () => {
    for (let k = 0; k < state.card.latent.directions.length; k++) if (state.amounts[state.selected][k]) await move(k, 0);
    select(state.selected);
  }));
  $("pick-a").addEventListener("click", () => { state.ends[0] = state.selected; run(drawStrip); });
  $("pick-b").addEventListener("click", () => { state.ends[1] = state.selected; run(drawStrip); });
  document.querySelectorAll('input[name="path"]').forEach((input) => input.addEventListener("change", () => run(drawStrip)));
  $("show-me").addEventListener("click", () => run(showMe));

  share(settings());
  await drawGrid();
  showRuntime();
  $("status").textContent = `Ready: ${state.card.registered_model ?? state.card.model}, in your browser (${runtime.backend}).`;
  document.body.dataset.ready = "true";
}

// For scripts and tests: the page's own functions and state.
window.dcgan = {
  state,
  runtime,
  generate: (z, n) => state.model.generate(Float32Array.from(z), n).then(Array.from),
  classify: (images, n) => state.model.classify(Float32Array.from(images), n).then(Array.from),
  idle: () => busy,
  ready: start().catch((error) => {
    $("status").textContent = `Error: ${error.message ?? error}`;
    $("status").classList.add("error");
    console.error(error);
    throw error;
  }),
};
