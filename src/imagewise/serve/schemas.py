"""The JSON the API answers with, one pydantic model per response (they also make /docs)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ClassScore(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(alias="class", description="class name")
    probability: float = Field(description="calibrated probability")


class ImagePrediction(BaseModel):
    source: str = Field(description="the uploaded file name without folders, or <body>")
    answer: str | None = Field(
        None, description="with a --min-confidence: the top class, or unknown below it"
    )
    ood_score: float | None = Field(
        None, description="with --ood: how unlike the training images it is (higher: more)"
    )
    prediction_set: list[str] | None = Field(
        None,
        description="with --coverage C: the classes that hold the true class with probability "
        "C (conformal), best first",
    )
    set_probabilities: list[float] | None = Field(
        None, description="with --coverage: the calibrated probabilities of the set's classes"
    )
    labels: list[str] | None = Field(
        None,
        description="a multi-label model's answer: every class whose probability reaches its "
        "threshold, most probable first (empty: no label)",
    )
    label_probabilities: list[float] | None = Field(
        None, description="a multi-label model's probabilities of its labels"
    )
    top_k: list[ClassScore] = Field(description="the best classes, best first")
    gradcam_png: str | None = Field(
        None, description="with gradcam=true: a base64 PNG of the Grad-CAM heat map over the image"
    )


class PredictResponse(BaseModel):
    model: str
    predictions: list[ImagePrediction] = Field(description="one per image, in the order sent")


class LabelsResponse(BaseModel):
    classes: list[str]


class InfoResponse(BaseModel):
    model: str
    backend: str = Field(description="pytorch, torchscript or onnx")
    classes: list[str]
    task: str = Field(
        "single",
        description="single (one class per image: softmax) or multilabel (a sigmoid per class; "
        "each answer's labels are the classes that reach their threshold)",
    )
    thresholds: list[float] | None = Field(
        None, description="a multi-label model's threshold per class, in the order of classes"
    )
    img_size: int
    channels: int
    temperature: float
    gradcam: bool = Field(description="whether gradcam=true is available")
    top_k: int = Field(description="classes per image when the request does not say")
    max_images: int
    max_body_bytes: int
    max_pixels: int
    max_request_pixels: int = Field(description="decoded pixels of one request's images in all")
    max_batch: int = Field(description="images per model call (1: batching off)")
    min_confidence: float | None = Field(
        None, description="the threshold below which answers are unknown, when set"
    )
    ood_score: str | None = Field(
        None, description="the out-of-distribution score each answer carries (energy, knn)"
    )
    coverage: float | None = Field(
        None, description="with --coverage: the coverage of each answer's prediction_set"
    )
    coverage_per_class: bool | None = Field(
        None, description="with --coverage: whether it holds for each class (class-conditional)"
    )
    drift_window: int | None = Field(
        None,
        description="with drift checks on: the latest answers each check looks at "
        "(GET /v1/drift answers them)",
    )
    conformal_score: str | None = Field(
        None, description="with --coverage: the conformity score of the sets (raps, aps, lac)"
    )


class StatusResponse(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    error: str
