"""Digit guesser: POST /guess with a picture of one handwritten digit (multipart field
`image`), get back {"digit": N, "score": P}.

The model (model/digits.onnx, made by tools/make_model.py) runs on onnxruntime, on the GPU when
the CUDA provider is there, else on the CPU. It is loaded once, before the server listens:
gunicorn's --preload imports this module in the master, so an instance that listens can answer.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request
from PIL import Image, UnidentifiedImageError

SIDE = 16
MODEL = Path(os.environ.get("MODEL_PATH", Path(__file__).parent / "model" / "digits.onnx"))

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
log = logging.getLogger("digits")

wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
session = ort.InferenceSession(
    str(MODEL), providers=[p for p in wanted if p in ort.get_available_providers()]
)
INPUT = session.get_inputs()[0].name
log.info("model %s loaded, providers %s", MODEL.name, session.get_providers())

app = Flask(__name__)


def pixels(data: bytes) -> np.ndarray:
    """The picture as the model reads it: 16x16 grey, ink 1.0 and paper 0.0, one row."""
    grey = Image.open(io.BytesIO(data)).convert("L").resize((SIDE, SIDE), Image.BILINEAR)
    ink = 1.0 - np.asarray(grey, dtype=np.float32) / 255.0
    return ink.reshape(1, SIDE * SIDE)


@app.get("/healthz")
def healthz():
    return {"ok": True}


@app.post("/guess")
def guess():
    upload = request.files.get("image")
    if upload is None:
        return jsonify(error="send the picture as the multipart field 'image'"), 400
    try:
        batch = pixels(upload.read())
    except UnidentifiedImageError:
        return jsonify(error="the 'image' field is not a picture"), 400
    (probabilities,) = session.run(None, {INPUT: batch})
    digit = int(np.argmax(probabilities[0]))
    score = round(float(probabilities[0][digit]), 4)
    log.info("guess %s (score %s) for %s", digit, score, upload.filename)
    return jsonify(digit=digit, score=score)
