"""Make the digit model (model/digits.onnx) and the canary's sample (samples/seven.png).

The model is a template matcher: the 16x16 picture (ink = 1.0, paper = 0.0, flattened to 256
floats) is scored against one template per digit, drawn from a 5x7 bitmap font and blurred a
little so that a hand-drawn stroke a pixel off still lands on it; softmax turns the scores into
probabilities. Tiny on purpose (about 10 KB), but a real ONNX graph (Gemm, Softmax) served by
onnxruntime, the way a team's own model is.

    pip install -r requirements-dev.txt
    python tools/make_model.py   # writes model/digits.onnx and samples/seven.png

Deterministic: running it again writes the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parents[1]
SIDE = 16
SHARPNESS = 12.0  # scales the cosine scores before softmax: a clear match gets a high score

FONT = {  # 5 x 7, "#" = ink
    0: [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "],
    1: ["  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "],
    2: [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"],
    3: ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "],
    4: ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "],
    5: ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "],
    6: ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "],
    7: ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "],
    8: [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "],
    9: [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "],
}


def template(rows: list[str]) -> np.ndarray:
    """The glyph drawn 2 px per font pixel into the 16x16 square, centred, then blurred."""
    glyph = np.array([[c == "#" for c in row] for row in rows], dtype=np.float32)
    big = np.kron(glyph, np.ones((2, 2), dtype=np.float32))  # 14 x 10
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    canvas[1:15, 3:13] = big
    padded = np.pad(canvas, 1)
    blurred = sum(
        padded[1 + dy : 1 + dy + SIDE, 1 + dx : 1 + dx + SIDE] * (1.0 if dx == dy == 0 else 0.5)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )
    return blurred / np.linalg.norm(blurred)


def build_model() -> onnx.ModelProto:
    weights = np.stack([template(FONT[d]).reshape(-1) for d in range(10)], axis=1) * SHARPNESS
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["pixels", "templates", "bias"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probabilities"], axis=1),
        ],
        "digits",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, SIDE * SIDE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "templates"),
            numpy_helper.from_array(np.zeros(10, dtype=np.float32), "bias"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="digit-service"
    )
    model.ir_version = 8  # what onnxruntime 1.1x-1.2x reads
    onnx.checker.check_model(model)
    return model


def draw_seven() -> Image.Image:
    """A seven as a person draws it: a top bar and a long slanted stroke, dark on white."""
    image = Image.new("L", (96, 96), 255)
    pen = ImageDraw.Draw(image)
    pen.line([(22, 14), (74, 14)], fill=0, width=11)
    pen.line([(72, 16), (38, 86)], fill=0, width=11)
    return image


def main() -> None:
    (HERE / "model").mkdir(exist_ok=True)
    (HERE / "samples").mkdir(exist_ok=True)
    onnx.save(build_model(), HERE / "model" / "digits.onnx")
    draw_seven().save(HERE / "samples" / "seven.png", optimize=True)
    print("wrote model/digits.onnx and samples/seven.png")


if __name__ == "__main__":
    main()
