// One model through onnxruntime-web's WebAssembly backend in Node, for benchmarks/portability.py:
//
//     node benchmarks/portability_ortweb.mjs ORTWEB_DIR MODEL.onnx FACES.f32 N,H,W,C BATCH[,BATCH...] OUT.json
//
// ORTWEB_DIR is a folder where `npm install onnxruntime-web` was run (outside the repository: it is not a
// dependency of fer-batch). FACES.f32 holds the model's input as raw little-endian float32 of shape N,H,W,C; the
// faces run in batches of each BATCH in turn. OUT.json gets {"version", "backend", "outputs"} (outputs: for each
// BATCH, N rows of probabilities), or {"version", "error"} when the model does not load or run; the exit status
// is 0 either way, 2 for bad arguments.
import { readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

const [ortwebDir, modelPath, facesPath, shapeText, batchesText, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error("usage: node portability_ortweb.mjs ORTWEB_DIR MODEL.onnx FACES.f32 N,H,W,C BATCH[,BATCH...] OUT.json");
  process.exit(2);
}
let ort;
try {
  ort = createRequire(join(resolve(ortwebDir), "package.json"))("onnxruntime-web");
} catch (error) {
  console.error(`${ortwebDir}: onnxruntime-web is not installed there (npm install onnxruntime-web): ${error.message}`);
  process.exit(2);
}
const version = ort.env.versions?.web ?? "unknown";
const shape = shapeText.split(",").map(Number);
const bytes = readFileSync(facesPath);
const pixels = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
if (pixels.length !== shape.reduce((a, b) => a * b, 1)) {
  console.error(`${facesPath}: ${pixels.length} floats, not the ${shapeText} the shape says`);
  process.exit(2);
}
ort.env.wasm.numThreads = 1; // one thread: no worker threads in Node, and light on a shared machine
let result;
try {
  const session = await ort.InferenceSession.create(readFileSync(modelPath), { executionProviders: ["wasm"] });
  const faceSize = shape.slice(1).reduce((a, b) => a * b, 1);
  const outputs = {};
  for (const batch of batchesText.split(",").map(Number)) {
    const rows = [];
    for (let start = 0; start < shape[0]; start += batch) {
      const count = Math.min(batch, shape[0] - start);
      const slice = pixels.subarray(start * faceSize, (start + count) * faceSize);
      const feeds = { [session.inputNames[0]]: new ort.Tensor("float32", slice, [count, ...shape.slice(1)]) };
      const output = (await session.run(feeds))[session.outputNames[0]];
      const width = output.data.length / count;
      for (let row = 0; row < count; row++) {
        rows.push(Array.from(output.data.subarray(row * width, (row + 1) * width)));
      }
    }
    outputs[batch] = rows;
  }
  result = { version, backend: "wasm", outputs };
} catch (error) {
  result = { version, error: `${modelPath}: ${String(error.message ?? error).split("\n")[0]}` };
}
writeFileSync(outPath, JSON.stringify(result));
