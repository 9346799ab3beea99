/*
 * imagewise's web page: classifies images in the browser, with onnxruntime-web on the CPU
 * (WebAssembly), with no server and no network.
 *
 * `imagewise export RUN --format web` writes it beside index.html, model.js (the ONNX model as
 * base64, with its metadata) and ort/ (onnxruntime-web's loader, its Emscripten glue as a string
 * and its WebAssembly binary as base64). Everything arrives as plain <script> files because
 * Chromium lets a page opened from disk (file://) neither fetch() nor import() other local files:
 * the glue is imported from a blob: URL and the binary handed over in memory (ort.env.wasm), which
 * works from disk and from any static server alike.
 *
 * The preprocessing is the model's input contract (its metadata: img_size, channels, mean, std,
 * interpolation, crop_pct), computed as imagewise computes it in Python with Pillow, so a PNG
 * gets here the pixels `imagewise predict` gives the model (see "Pillow's resize").
 *
 * window.imagewise is the page's interface for scripts (imagewise's own checks use it):
 * ready (a promise), scoresOfPixels(base64, n), preprocess(base64, width, height, contract),
 * pixelsOfFile(base64).
 */
"use strict";
(() => {
  const MODEL = window.IMAGEWISE_MODEL;
  const METADATA = MODEL.metadata;
  const $ = (selector) => document.querySelector(selector);

  function bytesOf(base64) {
    if (Uint8Array.fromBase64) return Uint8Array.fromBase64(base64);
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  function base64Of(bytes) {
    if (bytes.toBase64) return bytes.toBase64();
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  /** The input contract of the model's metadata (imagewise.edge.spec.InputContract). */
  function contractOf(metadata) {
    const value = (key, fallback) => (key in metadata ? JSON.parse(metadata[key]) : fallback);
    return {
      imgSize: value("img_size"),
      channels: value("channels"),
      mean: value("mean"),
      std: value("std"),
      interpolation: metadata.interpolation || "bilinear",
      cropPct: value("crop_pct", 1.0),
    };
  }

  const CONTRACT = contractOf(METADATA);
  const CLASSES = JSON.parse(METADATA.classes);
  const UNKNOWN = METADATA.unknown ? JSON.parse(METADATA.unknown) : null;
  const THRESHOLD = UNKNOWN && typeof UNKNOWN.min_confidence === "number" ? UNKNOWN.min_confidence : null;
  // A multi-label model (its graph answers a sigmoid per class): an image's labels are the classes
  // that reach their threshold (imagewise.edge.multilabel.label_sets), 0.5 where none was fitted.
  const MULTILABEL = METADATA.task === "multilabel";
  const LABEL_THRESHOLDS = MULTILABEL
    ? (METADATA.thresholds ? JSON.parse(METADATA.thresholds) : CLASSES.map(() => 0.5)) : null;

  /** A multi-label image's labels, most probable first (possibly none). */
  function labelSet(p) {
    return topK(p, p.length).filter((i) => p[i] >= LABEL_THRESHOLDS[i]);
  }

  /** Its least sure label decision (imagewise.edge.multilabel.decision_confidence): what the
   * fitted unknown threshold is compared with for a multi-label model. */
  function decisionConfidence(p) {
    let sure = 1;
    for (let i = 0; i < p.length; i++) sure = Math.min(sure, p[i] >= LABEL_THRESHOLDS[i] ? p[i] : 1 - p[i]);
    return sure;
  }

  // ---- Decoding --------------------------------------------------------------------------------
  // An image is {width, height, channels, data}: data holds one plane of height x width bytes per
  // channel (R, G, B or L), the layout the network takes.

  /** A decoded file as the model's mode: RGB, or L (ITU-R 601-2 luma, rounded as Pillow does). */
  async function decode(file, channels) {
    const bitmap = await bitmapOf(file);
    const { width, height } = bitmap;
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    // Transparent pixels on white, as imagewise composites them (exactly: both round c*a/255).
    context.fillStyle = "#fff";
    context.fillRect(0, 0, width, height);
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    return imageOf(context.getImageData(0, 0, width, height).data, width, height, channels);
  }

  /** The decoded file: no gamma or ICC profile applied (Pillow applies none), EXIF orientation
   * applied (as imagewise does); browsers that do not know these options decode it plainly. */
  async function bitmapOf(file) {
    const tries = [
      { colorSpaceConversion: "none", imageOrientation: "from-image" },
      { colorSpaceConversion: "none" },
      undefined,
    ];
    for (const options of tries) {
      try {
        return await createImageBitmap(file, options);
      } catch (error) {
        if (!(error instanceof TypeError) || options === undefined) throw error;
      }
    }
  }

  /** RGBA bytes (white background) -> planes of the model's channels. */
  function imageOf(rgba, width, height, channels) {
    const n = width * height;
    const data = new Uint8Array(channels * n);
    if (channels === 3) {
      for (let i = 0; i < n; i++) {
        data[i] = rgba[4 * i];
        data[n + i] = rgba[4 * i + 1];
        data[2 * n + i] = rgba[4 * i + 2];
      }
    } else {
      for (let i = 0; i < n; i++) {  // Pillow's convert("L"): L24(rgb) >> 16
        data[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
      }
    }
    return { width, height, channels, data };
  }

  // ---- Pillow's resize -------------------------------------------------------------------------
  // Written by hand because no browser API computes it: canvas drawImage and createImageBitmap
  // scale with their own filters, while Pillow's bilinear and bicubic filters widen their support
  // by the downscale factor (an antialiased, separable convolution in 8-bit fixed point, rows
  // first), and Image.resize(..., reducing_gap=3) first averages integer blocks when shrinking
  // more than 6x. The model was trained on Pillow's pixels and Python predicts on them; the same
  // pixels here keep the page's answers Python's. A port of Pillow 13.0's src/libImaging/
  // Resample.c, Reduce.c and Geometry.c (nearest) and PIL/Image.py (resize, _get_safe_box),
  // integer for integer; float32 where Pillow passes a float (Math.fround).

  const PILLOW_MAJOR = parseInt(MODEL.pillow || "13", 10);
  const PRECISION_BITS = 32 - 8 - 2;
  const REDUCING_GAP = 3.0;  // imagewise.edge.images resizes with reducing_gap=3.0
  const FILTERS = {
    bilinear: {
      support: 1.0,
      weight(x) {
        if (x < 0.0) x = -x;
        return x < 1.0 ? 1.0 - x : 0.0;
      },
    },
    bicubic: {
      support: 2.0,
      weight(x) {
        const a = -0.5;
        if (x < 0.0) x = -x;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
      },
    },
  };

  function clip8(sum) {
    const value = sum >> PRECISION_BITS;
    return value < 0 ? 0 : value > 255 ? 255 : value;
  }

  /** Resample.c precompute_coeffs + normalize_coeffs_8bpc: each output pixel's first input
   * pixel, count and fixed-point weights. */
  function coefficients(inSize, in0, in1, outSize, filter) {
    const scale = Math.fround(in1 - in0) / outSize;
    const filterScale = scale < 1.0 ? 1.0 : scale;
    const support = filter.support * filterScale;
    const ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const weights = new Int32Array(outSize * ksize);
    const k = new Float64Array(ksize);
    const inverse = 1.0 / filterScale;
    for (let xx = 0; xx < outSize; xx++) {
      const center = in0 + (xx + 0.5) * scale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let total = 0.0;
      for (let x = 0; x < xmax; x++) {
        k[x] = filter.weight((x + xmin - center + 0.5) * inverse);
        total += k[x];
      }
      for (let x = 0; x < xmax; x++) {
        const w = total !== 0.0 ? k[x] / total : k[x];
        const fixed = w * (1 << PRECISION_BITS);
        weights[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + fixed) : Math.trunc(0.5 + fixed);
      }
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { bounds, weights, ksize };
  }

  function horizontalPass(image, outWidth, offset, rows, coeffs) {
    const { width, height, channels, data } = image;
    const { bounds, weights, ksize } = coeffs;
    const out = new Uint8Array(channels * rows * outWidth);
    for (let c = 0; c < channels; c++) {
      for (let yy = 0; yy < rows; yy++) {
        const line = c * height * width + (yy + offset) * width;
        const target = c * rows * outWidth + yy * outWidth;
        for (let xx = 0; xx < outWidth; xx++) {
          const xmin = bounds[xx * 2];
          const xmax = bounds[xx * 2 + 1];
          let sum = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < xmax; x++) sum += data[line + xmin + x] * weights[xx * ksize + x];
          out[target + xx] = clip8(sum);
        }
      }
    }
    return { width: outWidth, height: rows, channels, data: out };
  }

  function verticalPass(image, outHeight, coeffs) {
    const { width, height, channels, data } = image;
    const { bounds, weights, ksize } = coeffs;
    const out = new Uint8Array(channels * outHeight * width);
    for (let c = 0; c < channels; c++) {
      const plane = c * height * width;
      for (let yy = 0; yy < outHeight; yy++) {
        const ymin = bounds[yy * 2];
        const ymax = bounds[yy * 2 + 1];
        const target = c * outHeight * width + yy * width;
        for (let xx = 0; xx < width; xx++) {
          let sum = 1 << (PRECISION_BITS - 1);
          for (let y = 0; y < ymax; y++) sum += data[plane + (y + ymin) * width + xx] * weights[yy * ksize + y];
          out[target + xx] = clip8(sum);
        }
      }
    }
    return { width, height: outHeight, channels, data: out };
  }

  /** Resample.c ImagingResampleInner: the box (float32) of the image to outWidth x outHeight, in
   * two passes. Pillow 13 runs the columns first when the height shrinks more than twice as much as
   * the width (earlier versions always ran the rows first); the order changes a few pixels by one,
   * so the page follows the Pillow that wrote it (MODEL.pillow). */
  function resample(image, outWidth, outHeight, filter, box) {
    const { width, height } = image;
    const needHorizontal = outWidth !== width || box[0] !== 0 || box[2] !== outWidth;
    const needVertical = outHeight !== height || box[1] !== 0 || box[3] !== outHeight;
    const rowsFirst = PILLOW_MAJOR < 13 || !(height - outHeight > 0 && height - outHeight > (width - outWidth) * 2);
    const horizontal = coefficients(width, box[0], box[2], outWidth, filter);
    const vertical = coefficients(height, box[1], box[3], outHeight, filter);
    let out = image;
    if (rowsFirst) {
      if (needHorizontal) {  // only the input rows the vertical pass reads
        const first = vertical.bounds[0];
        const last = vertical.bounds[outHeight * 2 - 2] + vertical.bounds[outHeight * 2 - 1];
        for (let i = 0; i < outHeight; i++) vertical.bounds[i * 2] -= first;
        out = horizontalPass(out, outWidth, first, last - first, horizontal);
      }
      if (needVertical) out = verticalPass(out, outHeight, vertical);
    } else {
      if (needVertical) out = verticalPass(out, outHeight, vertical);
      if (needHorizontal) out = horizontalPass(out, outWidth, 0, out.height, horizontal);
    }
    return out;
  }

  /** Reduce.c: the mean of each factorX x factorY block of the box (a partial block at the right
   * and bottom edges), rounded as Pillow does: ((sum + n/2) * multiplier) >> 24. */
  function reduce(image, factorX, factorY, box) {
    const { width, height, channels, data } = image;
    const [left, top, right, bottom] = box;
    const outWidth = Math.ceil((right - left) / factorX);
    const outHeight = Math.ceil((bottom - top) / factorY);
    const out = new Uint8Array(channels * outWidth * outHeight);
    const multiplier = (n) => Math.trunc(Math.fround(4294967296 / Math.fround(256 * n)));
    for (let c = 0; c < channels; c++) {
      const plane = c * height * width;
      for (let y = 0; y < outHeight; y++) {
        const y0 = top + y * factorY;
        const y1 = Math.min(y0 + factorY, bottom);
        for (let x = 0; x < outWidth; x++) {
          const x0 = left + x * factorX;
          const x1 = Math.min(x0 + factorX, right);
          const n = (x1 - x0) * (y1 - y0);
          let sum = Math.floor(n / 2);
          for (let yy = y0; yy < y1; yy++) {
            for (let xx = x0; xx < x1; xx++) sum += data[plane + yy * width + xx];
          }
          out[c * outWidth * outHeight + y * outWidth + x] = Math.floor((sum * multiplier(n)) / 16777216);
        }
      }
    }
    return { width: outWidth, height: outHeight, channels, data: out };
  }

  /** Geometry.c ImagingScaleAffine: nearest neighbour, positions summed as Pillow sums them. */
  function nearest(image, outWidth, outHeight, box) {
    const { width, height, channels, data } = image;
    const scaleX = Math.fround(box[2] - box[0]) / outWidth;
    const scaleY = Math.fround(box[3] - box[1]) / outHeight;
    const column = new Int32Array(outWidth);
    let xo = box[0] + scaleX * 0.5;
    for (let x = 0; x < outWidth; x++, xo += scaleX) column[x] = xo < 0.0 ? -1 : Math.trunc(xo);
    const out = new Uint8Array(channels * outWidth * outHeight);
    let yo = box[1] + scaleY * 0.5;
    for (let y = 0; y < outHeight; y++, yo += scaleY) {
      const row = yo < 0.0 ? -1 : Math.trunc(yo);
      if (row < 0 || row >= height) continue;
      for (let c = 0; c < channels; c++) {
        for (let x = 0; x < outWidth; x++) {
          if (column[x] >= 0 && column[x] < width) {
            out[c * outWidth * outHeight + y * outWidth + x] = data[c * width * height + row * width + column[x]];
          }
        }
      }
    }
    return { width: outWidth, height: outHeight, channels, data: out };
  }

  function crop(image, left, top, outWidth, outHeight) {
    const { width, height, channels, data } = image;
    const out = new Uint8Array(channels * outWidth * outHeight);
    for (let c = 0; c < channels; c++) {
      for (let y = 0; y < outHeight; y++) {
        const from = c * width * height + (top + y) * width + left;
        out.set(data.subarray(from, from + outWidth), c * outWidth * outHeight + y * outWidth);
      }
    }
    return { width: outWidth, height: outHeight, channels, data: out };
  }

  /** _imaging.c _resize: a box whose size is the output's is a crop; else nearest or resample. */
  function resizeBox(image, outWidth, outHeight, interpolation, box) {
    if (box[0] === Math.trunc(box[0]) && Math.fround(box[2] - box[0]) === outWidth &&
        box[1] === Math.trunc(box[1]) && Math.fround(box[3] - box[1]) === outHeight) {
      return crop(image, box[0], box[1], outWidth, outHeight);
    }
    if (interpolation === "nearest") return nearest(image, outWidth, outHeight, box);
    return resample(image, outWidth, outHeight, FILTERS[interpolation], box);
  }

  /** PIL Image.resize((outWidth, outHeight), interpolation, reducing_gap=3.0). */
  function resize(image, outWidth, outHeight, interpolation) {
    const { width, height } = image;
    if (width === outWidth && height === outHeight) return image;
    let box = [0, 0, width, height];
    if (interpolation !== "nearest") {
      const factorX = Math.trunc(width / outWidth / REDUCING_GAP) || 1;
      const factorY = Math.trunc(height / outHeight / REDUCING_GAP) || 1;
      if (factorX > 1 || factorY > 1) {
        // Image._get_safe_box: the pixels the filter reaches, whole
        const reach = FILTERS[interpolation].support - 0.5;
        const reachX = reach * (width / outWidth);
        const reachY = reach * (height / outHeight);
        const safe = [
          Math.max(0, Math.trunc(box[0] - reachX)),
          Math.max(0, Math.trunc(box[1] - reachY)),
          Math.min(width, Math.ceil(box[2] + reachX)),
          Math.min(height, Math.ceil(box[3] + reachY)),
        ];
        image = reduce(image, factorX, factorY, safe);
        box = [
          (box[0] - safe[0]) / factorX,
          (box[1] - safe[1]) / factorY,
          (box[2] - safe[0]) / factorX,
          (box[3] - safe[1]) / factorY,
        ];
      }
    }
    return resizeBox(image, outWidth, outHeight, interpolation, box.map(Math.fround));
  }

  /** Python's round(): halves to the even neighbour. */
  function roundHalfEven(x) {
    const r = Math.round(x);
    return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  /** imagewise.edge.images.fit_image: squash to size x size (crop_pct 1), or bring the shorter
   * side to floor(size / crop_pct) and keep the centre size x size square. */
  function fitImage(image, size, interpolation, cropPct) {
    if (cropPct >= 1.0) return resize(image, size, size, interpolation);
    const side = Math.floor(size / cropPct);
    const scale = side / Math.min(image.width, image.height);
    const width = Math.max(size, roundHalfEven(image.width * scale));
    const height = Math.max(size, roundHalfEven(image.height * scale));
    if (width !== image.width || height !== image.height) image = resize(image, width, height, interpolation);
    return crop(image, Math.floor((width - size) / 2), Math.floor((height - size) / 2), size, size);
  }

  /** uint8 (N, C, H, W) -> float32 (pixels / 255 - mean) / std, rounded as numpy rounds it
   * (InputContract.normalize: every step in float32). */
  function normalize(pixels, contract) {
    const plane = contract.imgSize * contract.imgSize;
    const tables = contract.mean.map((mean, c) => {
      const m = Math.fround(mean);
      const s = Math.fround(contract.std[c]);
      const table = new Float32Array(256);
      for (let v = 0; v < 256; v++) table[v] = Math.fround(Math.fround(Math.fround(v / 255) - m) / s);
      return table;
    });
    const out = new Float32Array(pixels.length);
    for (let i = 0; i < pixels.length; i++) out[i] = tables[Math.floor(i / plane) % contract.channels][pixels[i]];
    return out;
  }

  // ---- The model -------------------------------------------------------------------------------

  let session = null;
  let running = Promise.resolve();

  async function startSession() {
    // One thread: more need SharedArrayBuffer (a cross-origin-isolated page, which neither a file
    // nor a plain static server gives), and onnxruntime-web's worker threads cannot start from a
    // glue module imported from a blob: URL.
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.wasmBinary = bytesOf(window.IMAGEWISE_ORT_WASM);
    const glue = URL.createObjectURL(new Blob([window.IMAGEWISE_ORT_GLUE], { type: "text/javascript" }));
    ort.env.wasm.wasmPaths = { mjs: glue };
    delete window.IMAGEWISE_ORT_WASM;  // the binary is held once, by onnxruntime-web
    try {
      session = await ort.InferenceSession.create(bytesOf(MODEL.onnx), {
        executionProviders: ["wasm"],
        graphOptimizationLevel: "all",
      });
    } finally {
      URL.revokeObjectURL(glue);
    }
  }

  /** Logits and probabilities (Float32Array, n x classes) of normalized inputs; one run at a time. */
  function run(inputs, n) {
    const { imgSize, channels } = CONTRACT;
    const job = running.then(async () => {
      const feed = { [session.inputNames[0]]: new ort.Tensor("float32", inputs, [n, channels, imgSize, imgSize]) };
      const out = await session.run(feed);
      return { logits: out.logits.data, probabilities: out.probabilities.data };
    });
    running = job.catch(() => undefined);
    return job;
  }

  async function classifyFile(file) {
    const image = await decode(file, CONTRACT.channels).catch(() => {
      throw new Error("cannot read this file as an image (give a PNG, JPEG, WebP, GIF or BMP)");
    });
    const fitted = fitImage(image, CONTRACT.imgSize, CONTRACT.interpolation, CONTRACT.cropPct);
    const scores = await run(normalize(fitted.data, CONTRACT), 1);
    return scores.probabilities;
  }

  // ---- The page --------------------------------------------------------------------------------

  const cards = [];  // {file, url, el, probabilities}
  let queue = Promise.resolve();

  function say(text, bad = false) {
    $("#status").textContent = text;
    $("#status").classList.toggle("bad", bad);
  }

  function percent(p) {
    return (100 * p).toFixed(1) + "%";
  }

  function describeModel() {
    const { imgSize, channels, interpolation, cropPct } = CONTRACT;
    const mode = channels === 1 ? "grayscale" : "RGB";
    const int8 = (METADATA.quantization || "none") !== "none" ? " · INT8" : "";
    $("#model").textContent = `${METADATA.model || "model"} · ${CLASSES.length} classes · ${imgSize}×${imgSize} ${mode}${int8}`;
    const facts = [
      ["classes", CLASSES.join(", ")],
      ["input", `${imgSize}×${imgSize} ${mode}, ${interpolation} resize` +
        (cropPct < 1 ? `, centre crop ${cropPct}` : ", whole image")],
      ["mean / std", [CONTRACT.mean, CONTRACT.std].map((v) => v.map((x) => x.toPrecision(4)).join(", ")).join(" / ")],
      ["temperature", METADATA.temperature],
      ...(MULTILABEL ? [["labels", "multi-label: each class at or above its threshold (" +
        CLASSES.map((c, i) => `${c} ${percent(LABEL_THRESHOLDS[i])}`).join(", ") + ")"]] : []),
      ["unknown below", THRESHOLD === null ? "no threshold fitted" : percent(THRESHOLD)],
      ["weights", METADATA.quantization || "none"],
      ["runtime", `${MODEL.runtime}, WebAssembly, 1 thread, in this browser`],
      ["imagewise", METADATA.imagewise_version || ""],
    ];
    const list = $("#about dl");
    for (const [name, value] of facts) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      const dd = document.createElement("dd");
      dd.textContent = value;
      list.append(dt, dd);
    }
  }

  /** The top k classes, best first (ties keep the class order, as imagewise's stable sort). */
  function topK(probabilities, k) {
    const order = [...probabilities.keys()].sort((a, b) => probabilities[b] - probabilities[a]);
    return order.slice(0, Math.min(k, probabilities.length));
  }

  function showResult(card) {
    const el = card.el;
    const p = card.probabilities;
    const best = topK(p, Number($("#topk").value));
    const labels = MULTILABEL ? labelSet(p) : null;
    const confidence = MULTILABEL ? decisionConfidence(p) : p[best[0]];
    const unknown = THRESHOLD !== null && confidence < THRESHOLD;
    el.dataset.state = "done";
    el.dataset.unknown = String(unknown);
    const answer = !MULTILABEL ? CLASSES[best[0]]
      : labels.length ? labels.map((i) => `${CLASSES[i]} ${percent(p[i])}`).join(", ") : "no labels";
    el.dataset.labels = MULTILABEL ? labels.map((i) => CLASSES[i]).join("|") : "";
    el.querySelector(".label").textContent = unknown ? "unknown" : answer;
    const note = el.querySelector(".note");
    note.hidden = !unknown;
    const guess = MULTILABEL ? `labels (${answer}) not sure enough:` : "best guess";
    note.textContent = unknown ? `${guess} below the model's threshold of ${percent(THRESHOLD)}` : "";
    const bars = el.querySelector(".bars");
    bars.replaceChildren();
    for (const index of best) {
      const li = document.createElement("li");
      li.dataset.class = CLASSES[index];
      li.dataset.probability = String(p[index]);
      const name = document.createElement("span");
      name.className = "cls";
      name.textContent = CLASSES[index];
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = percent(p[index]);
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("i");
      fill.style.width = Math.max(0.5, 100 * p[index]).toFixed(1) + "%";
      bar.append(fill);
      li.append(name, pct, bar);
      bars.append(li);
    }
  }

  function showError(card, message) {
    card.el.dataset.state = "error";
    card.el.querySelector(".label").textContent = "not classified";
    card.el.querySelector(".bars").replaceChildren();
    card.el.querySelector(".error").textContent = message;
  }

  async function classifyAll(list) {
    const started = performance.now();
    for (const card of list) {
      try {
        card.probabilities = await classifyFile(card.file);
        showResult(card);
      } catch (error) {
        showError(card, error.message);
      }
    }
    const failed = list.filter((c) => c.el.dataset.state === "error").length;
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    say(`${list.length - failed} of ${list.length} images classified in ${seconds} s` +
      (failed ? `, ${failed} not readable` : ""), failed > 0);
  }

  function addFiles(files) {
    const added = [];
    for (const file of files) {
      const el = $("#card").content.firstElementChild.cloneNode(true);
      const card = { file, url: URL.createObjectURL(file), el, probabilities: null };
      el.querySelector(".photo").addEventListener("error", (event) => { event.target.hidden = true; });
      el.querySelector(".photo").src = card.url;
      el.querySelector(".photo").alt = file.name;
      el.querySelector(".name").textContent = file.name;
      el.querySelector(".name").title = file.name;
      $("#results").prepend(el);
      cards.push(card);
      added.push(card);
    }
    if (!added.length) return;
    say(`classifying ${added.length} image${added.length > 1 ? "s" : ""}…`);
    queue = queue.then(() => ready).then(
      () => classifyAll(added),
      () => added.forEach((card) => showError(card, "the model could not start in this browser")),
    );
  }

  function wirePage() {
    const drop = $("#drop");
    for (const name of ["dragenter", "dragover"]) {
      drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
    }
    for (const name of ["dragleave", "drop"]) {
      drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.remove("over"); });
    }
    drop.addEventListener("drop", (event) => addFiles(event.dataTransfer.files));
    // Files dropped beside the zone would otherwise replace the page.
    window.addEventListener("dragover", (event) => event.preventDefault());
    window.addEventListener("drop", (event) => event.preventDefault());
    $("#files").addEventListener("change", (event) => { addFiles(event.target.files); event.target.value = ""; });
    $("#topk").addEventListener("change", () => cards.filter((c) => c.probabilities).forEach(showResult));
    $("#clear").addEventListener("click", () => {
      for (const card of cards) URL.revokeObjectURL(card.url);
      cards.length = 0;
      $("#results").replaceChildren();
      say("");
    });
    const topk = $("#topk");
    for (const option of topk.options) option.disabled = Number(option.value) > CLASSES.length;
    const usable = [...topk.options].filter((option) => !option.disabled);
    if (topk.selectedOptions[0].disabled) topk.value = (usable[usable.length - 1] || topk.options[0]).value;
  }

  // ---- Start -----------------------------------------------------------------------------------

  const api = { state: "loading", error: null, contract: CONTRACT, metadata: METADATA, runtime: MODEL.runtime };
  const ready = startSession().then(
    () => {
      api.state = "ready";
      if (!cards.length) say("");
    },
    (error) => {
      api.state = "failed";
      api.error = String(error && error.message ? error.message : error);
      $("#model").textContent = "the model could not start";
      say(`The model could not start in this browser: ${api.error}`, true);
      throw error;
    },
  );
  ready.catch(() => undefined);

  api.ready = ready;
  /** Scores of n images given as base64 uint8 (N, C, H, W) at the model's size: the page's own
   * normalization and session, without the browser's decoding. */
  api.scoresOfPixels = async (base64, n) => {
    await ready;
    const scores = await run(normalize(bytesOf(base64), CONTRACT), n);
    return { logits: Array.from(scores.logits), probabilities: Array.from(scores.probabilities) };
  };
  /** The model's pixels (base64 uint8 planes) of a base64 RGBA image (white background), with
   * the page's contract or the one given (any of its fields). */
  api.preprocess = (base64, width, height, contract = {}) => {
    const c = { ...CONTRACT, ...contract };
    const image = imageOf(bytesOf(base64), width, height, c.channels);
    return base64Of(fitImage(image, c.imgSize, c.interpolation, c.cropPct).data);
  };
  /** The model's pixels (base64 uint8 planes) of an image file given as base64: the browser's
   * decoding, then the page's preprocessing (what the page classifies). */
  api.pixelsOfFile = async (base64) => {
    const image = await decode(new Blob([bytesOf(base64)]), CONTRACT.channels);
    return base64Of(fitImage(image, CONTRACT.imgSize, CONTRACT.interpolation, CONTRACT.cropPct).data);
  };
  window.imagewise = api;

  describeModel();
  wirePage();
  say("starting the model…");
})();
