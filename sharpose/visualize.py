"""Pictures of `sharpose demo` (OpenCV drawing, pixel-exact layouts), after the paper's Figure 5.

Per person, side by side at PANEL_SCALE times the model's input size, under a one-line header and a
strip of panel titles:
(1) the crop with the predicted skeleton; for SHaRPose also (2) the accumulated keypoint attention of
each coarse patch (min-max normalised, one flat cell per patch, JET colours blended over the crop) and
(3) the coarse patches chosen for the fine stage, outlined, the rest dimmed. The scene picture is the
whole image with every skeleton, box and label (SHaRPose: quality Q and whether the fine stage ran).
Colours are BGR.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sharpose.data import COCO, KeypointInfo, warp_points
from sharpose.demo import PersonPrediction

PANEL_SCALE = 2
HEADER_HEIGHT = 26
TITLE_HEIGHT = 22
GAP = 6
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
LEFT, RIGHT, CENTRE = (0, 255, 0), (0, 128, 255), (255, 153, 51)  # mmpose's COCO palette
SELECTED = (0, 255, 255)
BOX = (255, 0, 255)
DIM = 0.35  # brightness of the patches left at coarse resolution
ATTENTION_ALPHA = 0.55
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class PersonLayout:
    """Where the panels of a person picture go: `num_panels` crops of `input_size` (H, W) scaled by
    PANEL_SCALE, GAP apart, under the header and the titles."""

    input_size: tuple[int, int]
    num_panels: int

    @property
    def panel_size(self) -> tuple[int, int]:
        return self.input_size[0] * PANEL_SCALE, self.input_size[1] * PANEL_SCALE

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the picture."""
        h, w = self.panel_size
        return HEADER_HEIGHT + TITLE_HEIGHT + h, self.num_panels * w + (self.num_panels - 1) * GAP

    def panel_origin(self, index: int) -> tuple[int, int]:
        """(x, y) of the top-left pixel of panel `index`."""
        return index * (self.panel_size[1] + GAP), HEADER_HEIGHT + TITLE_HEIGHT


def crop_to_panel(points: np.ndarray) -> np.ndarray:
    """Crop pixel coordinates -> coordinates in a panel (pixel centres stay centres under the resize)."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * PANEL_SCALE - 0.5


def joint_colors(info: KeypointInfo) -> list[tuple[int, int, int]]:
    return [LEFT if n.startswith("left") else RIGHT if n.startswith("right") else CENTRE for n in info.keypoint_names]


def draw_pose(
    canvas: np.ndarray, points: np.ndarray, scores: np.ndarray, threshold: float, size: int, info: KeypointInfo = COCO
) -> None:
    """Limbs and joints with score >= `threshold`; `size` is the joint radius (lines are thinner)."""
    colors = joint_colors(info)
    height, width = canvas.shape[:2]
    margin = max(height, width)  # joints further out are off the picture: not drawn (cv2 takes int32 only)
    points = np.asarray(points, dtype=np.float64)
    on_canvas = np.isfinite(points).all(axis=1) & (np.abs(points - [width / 2, height / 2]) <= margin).all(axis=1)
    shown = (scores >= threshold) & on_canvas
    pixel = np.round(np.where(on_canvas[:, None], points, 0.0)).astype(np.int32)
    for a, b in info.skeleton:
        if shown[a] and shown[b]:
            color = colors[a] if colors[a] == colors[b] else CENTRE
            ends = tuple(map(int, pixel[a])), tuple(map(int, pixel[b]))
            cv2.line(canvas, *ends, color, max(1, size // 2), cv2.LINE_AA)
    for k in np.flatnonzero(shown):
        cv2.circle(canvas, tuple(map(int, pixel[k])), size, colors[k], -1, cv2.LINE_AA)


def put_label(canvas: np.ndarray, text: str, corner: tuple[int, int], font_scale: float) -> None:
    """White `text` on a filled BOX-coloured tag sitting on `corner` (a box's top-left), inside the box
    when there is no room above it."""
    (w, h), base = cv2.getTextSize(text, FONT, font_scale, 1)
    tag_height = h + base + 6
    x, y = min(max(corner[0], 0), max(canvas.shape[1] - w - 6, 0)), corner[1]
    y = y - tag_height if y >= tag_height else max(y, 0)
    cv2.rectangle(canvas, (x, y), (x + w + 6, y + tag_height), BOX, -1)
    cv2.putText(canvas, text, (x + 3, y + h + 3), FONT, font_scale, (255, 255, 255), 1, cv2.LINE_AA)


def upscale(crop: np.ndarray) -> np.ndarray:
    h, w = crop.shape[:2]
    return cv2.resize(crop, (w * PANEL_SCALE, h * PANEL_SCALE), interpolation=cv2.INTER_LINEAR)


def skeleton_panel(person: PersonPrediction, threshold: float) -> np.ndarray:
    panel = upscale(person.crop)
    points = crop_to_panel(warp_points(person.keypoints[:, :2], person.warp))
    draw_pose(panel, points, person.keypoints[:, 2], threshold, size=2 * PANEL_SCALE + 1)
    return panel


def attention_panel(person: PersonPrediction, grid: tuple[int, int]) -> np.ndarray:
    """The crop under the JET-coloured keypoint-attention score of each coarse patch."""
    panel = upscale(person.crop)
    scores = person.patch_scores.reshape(grid).astype(np.float64)
    span = scores.max() - scores.min()
    level = np.zeros_like(scores) if span <= 0 else (scores - scores.min()) / span
    colored = cv2.applyColorMap(np.round(level * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.resize(colored, (panel.shape[1], panel.shape[0]), interpolation=cv2.INTER_NEAREST)
    return cv2.addWeighted(panel, 1.0 - ATTENTION_ALPHA, colored, ATTENTION_ALPHA, 0.0)


def patch_rectangle(patch: int, grid: tuple[int, int], panel_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) panel pixels (x1, y1 exclusive) covered by coarse patch `patch` of a `grid`."""
    rows, cols = grid
    row, col = divmod(int(patch), cols)
    ph, pw = panel_shape[0] // rows, panel_shape[1] // cols
    return col * pw, row * ph, (col + 1) * pw, (row + 1) * ph


def selection_panel(person: PersonPrediction, grid: tuple[int, int]) -> np.ndarray:
    """The crop with the patches refined at high resolution outlined and the others dimmed."""
    bright = upscale(person.crop)
    panel = (bright * DIM).astype(np.uint8)
    rectangles = [patch_rectangle(p, grid, panel.shape) for p in person.selected]
    for x0, y0, x1, y1 in rectangles:
        panel[y0:y1, x0:x1] = bright[y0:y1, x0:x1]
    for x0, y0, x1, y1 in rectangles:
        cv2.rectangle(panel, (x0, y0), (x1 - 1, y1 - 1), SELECTED, 2)
    return panel


def person_header(index: int, person: PersonPrediction) -> str:
    text = f"person {index}   box score {person.box_score:.2f}"
    if person.quality is not None:
        stage = "fine stage ran" if person.refined else "exited after the coarse stage"
        text += f"   quality Q = {person.quality:.3f}   {stage}"
    return text


def person_figure(index: int, person: PersonPrediction, grid: tuple[int, int] | None, threshold: float) -> np.ndarray:
    """One person's picture; `grid` is the model's coarse grid (rows, cols), None for ViTPose."""
    panels = [(skeleton_panel(person, threshold), "keypoints")]
    if grid is not None:
        refined = f"{len(person.selected)} patches refined" if person.refined else "exited: none refined"
        panels += [(attention_panel(person, grid), "keypoint attention"), (selection_panel(person, grid), refined)]
    layout = PersonLayout(person.crop.shape[:2], len(panels))
    canvas = np.full((*layout.size, 3), BACKGROUND, dtype=np.uint8)
    cv2.putText(canvas, person_header(index, person), (4, HEADER_HEIGHT - 8), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    for i, (panel, title) in enumerate(panels):
        x, y = layout.panel_origin(i)
        canvas[y : y + panel.shape[0], x : x + panel.shape[1]] = panel
        cv2.putText(canvas, title, (x + 4, y - 6), FONT, 0.5, TEXT, 1, cv2.LINE_AA)
    return canvas


def scene_label(index: int, person: PersonPrediction) -> str:
    if person.quality is None:
        return f"#{index}"
    return f"#{index} Q={person.quality:.2f} {'fine' if person.refined else 'coarse'}"


def scene_figure(image: np.ndarray, people: Sequence[PersonPrediction], threshold: float) -> np.ndarray:
    """The whole image (same size) with each person's box and label, then every skeleton on top."""
    canvas = image.copy()
    unit = max(1, round(max(image.shape[:2]) / 500))
    height, width = image.shape[:2]
    for i, person in enumerate(people):
        # clipped just outside the picture: the visible edges stay, coordinates stay in cv2's int32
        x, y, w, h = person.box
        x0, x1 = (int(np.clip(round(v), -unit, width + unit)) for v in (x, x + w))
        y0, y1 = (int(np.clip(round(v), -unit, height + unit)) for v in (y, y + h))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), BOX, unit)
        x, y = x0, y0
        put_label(canvas, scene_label(i, person), (x, y), font_scale=0.45 * unit)
    for person in people:
        draw_pose(canvas, person.keypoints[:, :2], person.keypoints[:, 2], threshold, size=unit + 2)
    return canvas
