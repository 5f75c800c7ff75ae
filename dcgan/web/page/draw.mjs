// Generator output (N x C x S x S floats in [-1, 1]) to pixels, canvases and a grid PNG.
// Drawn by hand: ort.Tensor.toImageData gets one-channel images wrong.

// Image i of the batch as RGBA bytes: a pixel is (x + 1) * 127.5, rounded, as in `dcgan generate`.
export function rgba(images, i, channels, size) {
  const plane = size * size;
  const offset = i * channels * plane;
  const out = new Uint8ClampedArray(plane * 4);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) {
      const x = images[offset + (channels === 3 ? c : 0) * plane + p];
      out[p * 4 + c] = Math.round((Math.min(1, Math.max(-1, x)) + 1) * 127.5);
    }
    out[p * 4 + 3] = 255;
  }
  return out;
}

export function draw(canvas, pixels, size) {
  canvas.width = canvas.height = size;
  canvas.getContext("2d").putImageData(new ImageData(pixels, size, size), 0, 0);
}

// The images side by side as `dcgan generate` lays them out: up to 8 a row, 2 black pixels apart.
export function gridCanvas(images, size, padding = 2) {
  const cols = Math.min(images.length, 8);
  const rows = Math.ceil(images.length / cols);
  const step = size + padding;
  const canvas = document.createElement("canvas");
  canvas.width = cols * step + padding;
  canvas.height = rows * step + padding;
  const context = canvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  images.forEach((pixels, i) => {
    const [r, c] = [Math.floor(i / cols), i % cols];
    context.putImageData(new ImageData(pixels, size, size), padding + c * step, padding + r * step);
  });
  return canvas;
}
