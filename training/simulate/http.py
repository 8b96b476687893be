"""The HTTP backend: the running service over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from typing import TYPE_CHECKING, Any

from features.profile import StudentProfile
from features.store import EventIn
from training.errors import SimulationError
from training.simulate.config import POST_BATCH, Progress
from training.simulate.engine import PostSummary, Shown, Visit

if TYPE_CHECKING:
    import httpx


class _Unauthorized(SimulationError):
    """The service refused the API key: no call can succeed, the run stops."""


class HttpBackend:
    """The running service over real HTTP, with `concurrency` requests in flight.

    Transport errors and 503 answers are retried (events are idempotent by id); a 401 stops the run.

    Args:
        url: base URL of the service.
        api_key: the portal's API key.
        concurrency: requests in flight.
        timeout: seconds per request.
        retries: extra attempts on transport errors and 503.
    """

    def __init__(
        self, url: str, api_key: str, concurrency: int = 4, timeout: float = 10.0, retries: int = 2
    ) -> None:
        import httpx

        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.url = url.rstrip("/")
        self.retries = retries
        self.client = httpx.Client(
            base_url=self.url,
            headers={"X-API-Key": api_key},
            timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="simulate")

    def close(self) -> None:
        """Close the connections and the worker threads."""
        self.pool.shutdown(wait=True)
        self.client.close()

    def __enter__(self) -> HttpBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        import httpx

        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(0.2 * 2 ** (attempt - 1))
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = exc
                continue
            if response.status_code == 401:
                raise _Unauthorized(f"{self.url} refused the API key: {_detail(response)}")
            if response.status_code == 503 and attempt < self.retries:
                continue
            return response
        raise SimulationError(f"{method} {self.url}{path} failed after {self.retries + 1} attempts: {last!r}")

    def _get(self, visit: Visit, k: int) -> Shown:
        try:
            response = self._send(
                "GET",
                "/recommendations",
                params={"student_id": visit.student_id, "k": k},
                headers={"X-Request-ID": visit.request_id},
            )
        except _Unauthorized:
            raise
        except SimulationError as exc:
            return Shown(visit.request_id, error=str(exc))
        if response.status_code != 200:
            return Shown(
                visit.request_id,
                error=f"GET /recommendations {visit.student_id}: {response.status_code} {_detail(response)}",
            )
        body = response.json()
        experiment, variant = _experiment_fields(body)
        model = body.get("model") or {}
        return Shown(
            request_id=str(body.get("request_id") or visit.request_id),
            lecture_ids=tuple(str(item["lecture_id"]) for item in body.get("items", ())),
            experiment=experiment,
            variant=variant,
            model_version=str(model.get("version")) if isinstance(model, dict) else None,
        )

    def recommend(self, visits: Sequence[Visit], k: int) -> list[Shown]:
        """GET /recommendations for each visit (`concurrency` at a time), answers in visit order."""
        return list(self.pool.map(lambda v: self._get(v, k), visits))

    def post_events(self, events: Sequence[EventIn]) -> PostSummary:
        """POST /events in batches of `POST_BATCH`, in time order.

        Raises:
            SimulationError: a batch was refused as a whole (4xx) or the service stayed unavailable.
        """
        summary = PostSummary()
        for lo in range(0, len(events), POST_BATCH):
            batch = events[lo : lo + POST_BATCH]
            body = {"events": [_event_json(e) for e in batch]}
            response = self._send("POST", "/events", json=body)
            if response.status_code != 200:
                raise SimulationError(
                    f"POST /events refused a batch: {response.status_code} {_detail(response)}"
                )
            answer = response.json()
            part = PostSummary(
                accepted=int(answer.get("accepted", 0)),
                duplicates=int(answer.get("duplicates", 0)),
                rejected=int(answer.get("rejected", 0)),
            )
            for item in answer.get("items", ()):
                if item.get("status") == "rejected" and len(part.errors) < 10:
                    fields = "; ".join(f"{e['field']}: {e['message']}" for e in item.get("errors", ()))
                    part.errors.append(f"event {item.get('event_id')}: {fields}")
            summary.add(part)
        return summary

    def register_students(self, profiles: Sequence[StudentProfile], progress: Progress | None = None) -> int:
        """PUT /students/{id} for each profile, as the portal registers its students.

        Returns:
            Profiles stored.

        Raises:
            SimulationError: a profile was refused (the message quotes the service).
        """

        def put(p: StudentProfile) -> tuple[StudentProfile, int, str]:
            body: dict[str, Any] = {"region": p.region, "grade": p.grade}
            if p.school_level is not None:
                body["school_level"] = p.school_level
            if p.target_exam is not None:
                body["target_exam"] = p.target_exam
            if p.interest_subjects:
                body["interest_subjects"] = list(p.interest_subjects)
            response = self._send("PUT", f"/students/{p.student_id}", json=body)
            return p, response.status_code, "" if response.status_code == 200 else _detail(response)

        stored = 0
        for done, (p, status, detail) in enumerate(self.pool.map(put, profiles), start=1):
            if status != 200:
                raise SimulationError(f"PUT /students/{p.student_id}: {status} {detail}")
            stored += 1
            if progress and (done % 100 == 0 or done == len(profiles)):
                progress("register", done, len(profiles))
        return stored


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:200]


def _experiment_fields(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(experiment key, variant) from a recommendations answer (flat fields or an ``experiment`` object)."""
    experiment = body.get("experiment")
    variant = body.get("variant")
    if isinstance(experiment, Mapping):
        variant = experiment.get("variant", variant)
        experiment = experiment.get("key") or experiment.get("experiment")
    return (str(experiment) if experiment else None), (str(variant) if variant else None)


def _event_json(e: EventIn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event_id": e.event_id,
        "student_id": e.student_id,
        "lecture_id": e.lecture_id,
        "type": e.type,
        "progress": float(e.progress),
        "occurred_at": e.occurred_at.astimezone(UTC).isoformat(timespec="microseconds"),
    }
    if e.request_id:
        out["request_id"] = e.request_id
    return out
