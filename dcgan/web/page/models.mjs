// The generator and the classifier under onnxruntime-web's wasm backend, one run at a time.
import * as ort from "./ort/ort.wasm.min.mjs";

ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
ort.env.wasm.numThreads = 1; // threads need COOP/COEP headers and did not help on 2 cores
ort.env.logLevel = "error";

export const runtime = { backend: "wasm", threads: 1, version: ort.env.versions?.web ?? "?", timings: {} };

let queue = Promise.resolve(); // a session runs one request at a time
function serial(task) {
  const result = queue.then(task);
  queue = result.catch(() => {});
  return result;
}

async function timed(name, task) {
  const start = performance.now();
  const result = await task();
  runtime.timings[name] = performance.now() - start;
  return result;
}

export async function load(card) {
  const options = { executionProviders: ["wasm"] };
  const [generator, classifier] = await timed("session_ms", () => Promise.all([
    ort.InferenceSession.create(card.files.generator.name, options),
    ort.InferenceSession.create(card.files.classifier.name, options),
  ]));
  const { z_dim: zDim, channels, image_size: size } = card;
  return {
    // n latents (Float32Array n * zDim) -> images, Float32Array n * channels * size * size in [-1, 1]
    generate: (z, n) => serial(() => timed("generate_ms", async () => {
      const out = await generator.run({ z: new ort.Tensor("float32", z, [n, zDim, 1, 1]) });
      return out.images.data;
    })),
    // n images as the generator makes them -> class probabilities, Float32Array n * classes
    classify: (images, n) => serial(() => timed("classify_ms", async () => {
      const out = await classifier.run({ images: new ort.Tensor("float32", images, [n, channels, size, size]) });
      return out.probabilities.data;
    })),
  };
}
