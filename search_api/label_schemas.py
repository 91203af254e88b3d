"""Pydantic models of the custom-label routes, for the OpenAPI description (see search_api/schemas.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from search_api.query_values import MAX_PAGE_OFFSET, Integer
from search_api.schemas import ImageDetails

IDS = "Catalog ids of indexed images."


class LabelCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64,
                      description="Unique (ignoring case); letters, digits, spaces and -_.'&()+#@!, ; not the name "
                                  "of an ImageNet class.")
    positive_ids: list[int] = Field(min_length=1, description=f"Images of the label. {IDS}")
    negative_ids: list[int] = Field(default_factory=list, description=f"Images that are not of the label. {IDS}")
    threshold: float | None = Field(None, ge=0.0, le=1.0,
                                    description="Lowest score of an image that has the label; null: the learned "
                                                "default.")


class LabelChange(BaseModel):
    add_positive_ids: list[int] = Field(default_factory=list,
                                        description=f"New positive examples (a negative example moves over). {IDS}")
    add_negative_ids: list[int] = Field(default_factory=list,
                                        description=f"New negative examples (a positive example moves over). {IDS}")
    remove_ids: list[int] = Field(default_factory=list, description=f"Examples to forget. {IDS}")
    threshold: float | None = Field(None, ge=0.0, le=1.0,
                                    description="Set the threshold; null: back to the learned default; absent: keep.")
    relearn: bool = Field(False, description="Learn again from the examples (needed after a model change).")


class LabelQuality(BaseModel):
    folds: int = Field(description="Cross-validation folds over the positive examples.")
    auc: float = Field(description="Chance that a positive example the label did not see scores above a random "
                                   "library image.")
    recall: float = Field(description="Share of held-out positive examples at or above the default threshold.")


class CustomLabel(BaseModel):
    name: str
    state: Literal["ready", "scoring", "empty", "stale"] = Field(
        description="ready; scoring: new scores are being computed (the old ones answer meanwhile); empty: no "
                    "positive example is left; stale: learned with another model, relearn it to use it.")
    positive_ids: list[int]
    negative_ids: list[int]
    missing_examples: int = Field(description="Examples whose images are not in the catalog under the current model.")
    threshold: float
    threshold_auto: bool = Field(description="The threshold follows the learned default.")
    default_threshold: float | None = Field(description="The threshold learning suggests (cross-validated).")
    count: int = Field(description="Images that have the label.")
    quality: LabelQuality | None = Field(description="Cross-validated estimate; null with fewer than 3 positives.")
    model_id: str = Field(description="The model whose vectors the label was learned on.")
    created_at: str
    updated_at: str
    message: str | None = Field(None, description="For a stale label: how to relearn it.")


class LabelList(BaseModel):
    labels: list[CustomLabel]


class LabelDeleted(BaseModel):
    name: str
    deleted: bool


class MembersParams(BaseModel):
    offset: Integer = Field(0, ge=0, le=MAX_PAGE_OFFSET, description="Images to skip.")
    limit: Integer = Field(50, ge=1, le=500, description="Images per page.")


class LabelMember(ImageDetails):
    score: float = Field(description="The image's score for the label.")
    member: bool = Field(description="At or above the threshold: the image has the label.")
    borderline: bool = Field(description="Close to the threshold: worth confirming or rejecting.")
    example: Literal["positive", "negative"] | None = Field(description="The image is an example of the label.")


class LabelMembers(BaseModel):
    label: CustomLabel
    members: list[LabelMember] = Field(description="Best score first: the members, then the near misses.")
    total: int
    offset: int
    limit: int
    next_offset: int | None
    borderline: list[float] = Field(description="The scores counted as borderline: [low, high).")
