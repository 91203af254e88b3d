"""Pydantic models of the HTTP API's parameters, request bodies and responses.

The query models validate every request's query string (search_api/params.py) and describe it in
the OpenAPI document, so the document is what the routes enforce; their value types, wording and
setting-dependent limits are in search_api/query_values.py.
The views build their JSON by hand (search_api/results.py); tests validate real responses
against the response models, so the description cannot drift from what is served.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from search_api.query_values import (
    DEFAULT_SUGGESTIONS,
    MAX_DUPLICATE_GROUPS,
    MAX_PAGE_OFFSET,
    MAX_SUGGESTIONS,
    MIN_DUPLICATES_THRESHOLD,
    ClassRuleName,
    Flag,
    Integer,
    Number,
    Wording,
)

# --- query parameters ---------------------------------------------------------------------------


class SearchParams(BaseModel):
    """Query parameters shared by the search routes."""

    k: Integer = Field(None, ge=1, description="Number of results per page.",  # type: ignore[assignment]
                       json_schema_extra={"x-setting-default": "search.default_k", "x-setting-maximum": "search.max_k"})
    offset: Annotated[Integer, Wording("{name} must be an integer from {low} to {high} (search.max_offset), "
                                       "got {raw!r}")] = Field(
        0, ge=0, description="Results to skip (pagination): the page holds results offset..offset+k. "
                             "Use the response's next_offset for the next page.",
        json_schema_extra={"x-setting-maximum": "search.max_offset"})
    class_: list[str] = Field(
        default_factory=list, alias="class",
        description="Keep only images of these ImageNet classes or WordNet concepts (class id, class name, concept "
                    "name such as dog or vehicle, or WordNet id) or custom labels (label:<name>); repeat for any "
                    "of several. See class_rule.")
    class_rule: ClassRuleName = Field(
        "top5", description="top5: an image matches a class that is its top-1 prediction, or in its top-5 with "
                            "probability >= class_min_probability; top1: only its top-1 prediction counts.")
    class_min_probability: Number = Field(
        None, ge=0.0, le=1.0,  # type: ignore[assignment]
        description="Minimum probability of a top-5 match (class_rule=top5 only).",
        json_schema_extra={"x-setting-default": "search.class_min_probability"})
    min_score: Annotated[Number, Wording("{name} must be a number from {low:g} to {high:g} (cosine similarity), "
                                         "got {raw!r}")] = Field(
        None, ge=-1.0, le=1.0,  # type: ignore[assignment]
        description="Drop results whose cosine similarity is below this.")
    dedupe: Flag = Field(False, description="Collapse near-duplicates (cosine >= search.dedupe_threshold) into the "
                         "best-scoring member; each result then lists the ids folded into it in `duplicates`.")


class ClassesParams(BaseModel):
    q: str = Field(None, description="Autocomplete: classes and concepts whose names contain this text.")  # type: ignore[assignment]
    limit: Integer = Field(None, ge=1, le=MAX_SUGGESTIONS,  # type: ignore[assignment]
                           description=f"Most entries to return (default {DEFAULT_SUGGESTIONS} with q, else all).")
    class_rule: ClassRuleName = Field("top5", description="How counts match images (see search).")
    class_min_probability: Number = Field(None, ge=0.0, le=1.0,  # type: ignore[assignment]
                                          description="Minimum probability of a top-5 match.")


class BrowseParams(BaseModel):
    class_: list[str] = Field(default_factory=list, alias="class",
                              description="Classes, concepts or custom labels (label:<name>) to list (repeatable); "
                                          "none: every image, newest first.")
    class_rule: ClassRuleName = Field("top5", description="When an image counts as showing a class.")
    class_min_probability: Number = Field(None, ge=0.0, le=1.0,  # type: ignore[assignment]
                                          description="Minimum probability of a top-5 match.")
    offset: Integer = Field(0, ge=0, le=MAX_PAGE_OFFSET, description="Images to skip.")
    limit: Integer = Field(50, ge=1, le=500, description="Images per page.")


class DuplicatesParams(BaseModel):
    threshold: Annotated[Number, Wording("{name} must be a number from {low:g} to {high:g} (cosine similarity), "
                                         "got {raw!r}")] = Field(
        None, ge=MIN_DUPLICATES_THRESHOLD, le=1.0,  # type: ignore[assignment]
        description="Cosine similarity at or above which two images count as near-duplicates (as `lookalike "
                    "duplicates --threshold`); lower values would chain most of a library into one group.",
        json_schema_extra={"x-setting-default": "search.dedupe_threshold"})
    offset: Integer = Field(0, ge=0, le=MAX_PAGE_OFFSET, description="Groups to skip (identical files first).")
    limit: Integer = Field(20, ge=1, le=MAX_DUPLICATE_GROUPS, description="Groups per page.")


# --- bodies and responses -----------------------------------------------------------------------


class ImageUpload(BaseModel):
    image: bytes = Field(description="The query image (JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC/HEIF, AVIF).")


class BatchUpload(BaseModel):
    images: list[bytes] = Field(description="One part per query image, all named `images` "
                                "(at most api.max_batch_images).")


class Problem(BaseModel):
    """RFC 9457 problem details; extra members name what was wrong (`parameter`, `field`, `limit`, `index`)."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="Always about:blank: `code` tells problems apart.")
    title: str = Field(description="HTTP status phrase.")
    status: int
    detail: str = Field(description="What was wrong and how to fix it.")
    code: str = Field(description="Stable machine-readable problem code, e.g. invalid_parameter, not_image.")
    instance: str = Field(description="Path of the request.")
    parameter: str | None = Field(None, description="The query parameter at fault.")
    field: str | None = Field(None, description="The request part at fault (image, images, body).")


class Label(BaseModel):
    class_id: int = Field(ge=0, le=999, description="ImageNet-1k class index.")
    name: str
    probability: float


class CustomLabelScore(BaseModel):
    name: str = Field(description="A custom label the image has (filter with class=label:<name>).")
    score: float = Field(ge=0.0, le=1.0, description="The image's score for it (at or above its threshold).")


class Hit(BaseModel):
    id: int
    path: str
    score: float = Field(description="Cosine similarity of the feature vectors.")
    labels: list[Label] = Field(description="Top-5 ImageNet predictions of the image.")
    custom_labels: list[CustomLabelScore] = Field(description="The custom labels the image has, best score first.")
    file_url: str
    thumbnail_url: str = Field(description="A small upright WebP preview without metadata.")
    duplicates: list[int] = Field(default_factory=list,
                                  description="With dedupe=true: ids of near-duplicate images collapsed into this one.")
    paths: list[str] = Field(default_factory=list,
                             description="With dedupe=true: every file with this exact content.")
    collapsed: int = Field(0, description="With dedupe=true: near and exact duplicates collapsed into this result.")


class Page(BaseModel):
    results: list[Hit] = Field(description="Best first.")
    next_offset: int | None = Field(description="offset of the next page; null on the last page.")


class UploadQuery(BaseModel):
    labels: list[Label] = Field(description="Top-5 predictions of the query image.")


class SearchResponse(Page):
    query: UploadQuery


class IndexedQuery(BaseModel):
    id: int
    labels: list[Label]


class SimilarResponse(Page):
    query: IndexedQuery


class BatchQuery(BaseModel):
    index: int = Field(description="Position of the image in the request.")
    filename: str | None
    labels: list[Label] = Field(default_factory=list, description="Top-5 predictions (absent when `error` is set).")


class BatchItem(Page):
    query: BatchQuery
    error: Problem | None = Field(None, description="Why this image could not be searched; `results` is then empty.")


class BatchResponse(BaseModel):
    results: list[BatchItem] = Field(description="One item per uploaded image, in request order.")


class ImageDetails(BaseModel):
    id: int
    path: str
    paths: list[str]
    width: int
    height: int
    format: str
    size: int
    content_hash: str
    labels: list[Label]
    custom_labels: list[CustomLabelScore] = Field(default_factory=list,
                                                  description="The custom labels the image has, best score first.")
    file_url: str
    thumbnail_url: str = Field(description="A small upright WebP preview without metadata.")


class ClassCount(BaseModel):
    kind: Literal["class", "concept", "label"]
    class_id: int | None = Field(description="ImageNet class index; null for a concept or a custom label.")
    name: str = Field(description="A value for the class parameter that selects exactly this entry.")
    count: int = Field(description="Images matching it under the class rule.")
    concept_id: str | None = Field(None, description="Concepts: the WordNet id.")
    names: list[str] | None = Field(None, description="Concepts: every WordNet name.")
    classes: int | None = Field(None, description="Concepts: number of ImageNet classes below it.")
    label: str | None = Field(None, description="Custom labels: the label's name (`name` is label:<name>).")


class ClassesResponse(BaseModel):
    classes: list[ClassCount]


class MatchedClass(BaseModel):
    class_id: int | None = Field(description="ImageNet class index; null for a custom label.")
    name: str = Field(description="The class name, or label:<name> for a custom label.")
    label: str | None = Field(None, description="Custom labels: the label's name.")


class BrowseImage(ImageDetails):
    probability: float = Field(description="Probability of the image's most probable matching class (for a custom "
                                           "label: its score).")
    matched_class: MatchedClass


class BrowseResponse(BaseModel):
    images: list[BrowseImage]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class ModelInfo(BaseModel):
    handle: str
    image_size: int
    crop_fraction: float = Field(description="model.crop_fraction as applied: the centre square's side as a "
                                             "fraction of the shorter side")
    id: str
    stand_in: bool
    note: str | None


class Stats(BaseModel):
    images: int
    files: int
    vectors: int
    generation: int | None
    model_id: str
    model: ModelInfo
    index_type: str | None = Field(description="FAISS factory string of the index searched (null: no index yet).")
    nprobe: int | None = Field(description="Inverted lists visited per query (null: not an IVF index).")
    nprobe_source: Literal["measured", "storage.nprobe", "default"] | None = Field(
        description="measured: the smallest nprobe reaching storage.recall_target when the index was built; "
                    "storage.nprobe: set in the configuration; default: an index built before nprobe was measured.")
    recall_at_10: float | None = Field(description="recall@10 against exact search at this nprobe, measured when the "
                                                   "index was built on queries drawn from the collection (1.0 for "
                                                   "exact search; null: not measured).")
    exact_scan_ms: float | None = Field(description="One query's exact scan of the collection, timed on this machine "
                                                    "when the index was built (null: not measured).")
    exact_budget_ms: float = Field(description="storage.exact_budget_ms: auto searches exactly while the scan fits.")


class Health(BaseModel):
    status: str
    instance: str | None = Field(None, description="Token of this `lookalike serve` run, also written to server.json "
                                                   "in its data dir (null outside `lookalike serve`).")


class Ready(Stats):
    status: str
    in_step: bool = Field(description="The index holds exactly the catalog's images (false for a moment while an "
                                      "indexer runs).")


class IndexJob(BaseModel):
    id: str
    kind: Literal["index"]
    state: Literal["queued", "running", "done", "interrupted", "failed"]
    roots: list[str]
    created_at: float = Field(description="Unix time the job was asked for.")
    started_at: float | None
    finished_at: float | None
    pid: int | None = Field(description="The `lookalike index` process running it.")
    found: int = Field(description="Files found under the roots.")
    total: int = Field(description="Files to index (new or changed).")
    done: int = Field(description="Of `total`, files done (indexed, linked or failed).")
    indexed: int
    linked: int
    failed: int
    images_per_second: float
    eta_seconds: float | None = Field(description="Seconds left at the current rate (null: not known yet).")
    summary: dict[str, object] | None = Field(description="At the end, the fields of `lookalike index --json`.")
    error: str | None


class WatcherActivity(BaseModel):
    roots: list[str] = Field(description="The library roots the watcher watches.")
    vanished: list[str] = Field(description="Roots missing or unmounted now (nothing under them is removed).")
    waiting: int = Field(description="Files written lately, waiting to be complete before they are indexed.")
    lag_seconds: float = Field(description="Age of the oldest change not committed yet (0: none).")
    indexed: int = Field(description="Images the watcher indexed since it started.")
    removed: int = Field(description="Images the watcher removed since it started.")


class Activity(BaseModel):
    images: int = Field(description="Images in the catalog now.")
    vectors: int = Field(description="Vectors searchable now.")
    job: IndexJob | None = Field(description="The index job running now (null: none).")
    watcher: WatcherActivity | None = Field(description="The watcher keeping the library in step (null: none runs).")


class IndexJobList(BaseModel):
    jobs: list[IndexJob] = Field(description="The last jobs, newest first.")


Suggested = Literal["keep", "remove"]
SUGGESTED = "keep: the copy suggested for keeping (most pixels, then most bytes per pixel, then oldest); remove: " \
            "the others. Only a suggestion: the server deletes nothing."


class DuplicateFile(BaseModel):
    path: str
    modified: str = Field(description="The file's modification time, ISO 8601 in UTC.")
    suggested: Suggested = Field(description=SUGGESTED)


class ExactDuplicates(BaseModel):
    """Files with identical content: one catalog image at several paths."""

    kind: Literal["exact"]
    image_id: int
    paths: list[str]
    keep: str = Field(description="Path of the file suggested for keeping: the oldest (the content is the same).")
    width: int
    height: int
    format: str
    size: int = Field(description="Bytes of each file.")
    files: list[DuplicateFile]
    file_url: str
    thumbnail_url: str


class NearDuplicate(BaseModel):
    id: int
    paths: list[str] = Field(description="Every file with this exact content.")
    score: float = Field(description="Cosine similarity to the group's first image.")
    link: float = Field(description="Cosine similarity to its closest other image of the group (>= threshold).")
    width: int
    height: int
    format: str
    size: int = Field(description="Bytes of the file.")
    modified: str = Field(description="Modification time of its oldest file, ISO 8601 in UTC.")
    suggested: Suggested = Field(description=SUGGESTED)
    file_url: str
    thumbnail_url: str


class NearDuplicates(BaseModel):
    """Distinct images linked by chains of pairs with cosine similarity >= the threshold."""

    kind: Literal["near"]
    keep: int = Field(description="Id of the image suggested for keeping.")
    images: list[NearDuplicate]


class DuplicatesResponse(BaseModel):
    threshold: float
    groups: list[Annotated[ExactDuplicates | NearDuplicates, Field(discriminator="kind")]] = Field(
        description="Groups of identical files first, then groups of near-duplicates, as `lookalike duplicates "
                    "--json` lists them under exact and near.")
    exact_total: int = Field(description="Groups of identical files in the library.")
    near_total: int = Field(description="Groups of near-duplicates in the library.")
    total: int
    offset: int
    limit: int
    next_offset: int | None


class SessionInfo(BaseModel):
    """Whether this server needs a key, and what the caller (by key or session cookie) may do."""

    keys_required: bool = Field(description="Every route but /healthz, /readyz, the page and the docs needs a key.")
    signed_in: bool = Field(description="The request carried a valid key or session cookie (always true when no "
                                        "key is needed).")
    name: str | None = Field(None, description="The key's name.")
    scope: str | None = Field(None, description="read, write or admin (admin when no key is needed).")
    may: list[str] = Field(description="What the caller may do: some of read, write, admin.")
    csrf_token: str | None = Field(None, description="With the session cookie: send it as X-CSRF-Token with every "
                                                     "request that is not a GET.")
    upload_dir: str | None = Field(None, description="For a caller that may write: the folder of images added "
                                                     "over HTTP, ending in a separator (those can be removed).")


class SignIn(BaseModel):
    key: str = Field(description="An API key (`lookalike keys create NAME` prints one).")


class LibraryUpload(BaseModel):
    """An image to add to the library."""

    image: bytes = Field(description="The image file.")
    name: str | None = Field(None, description="A name for the stored file (default: the uploaded file's name).")
