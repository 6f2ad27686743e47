"""The drafters of a batch scheduler's slots: who drafts for a slot, and what outlives a request.

Each slot gets a drafter of its own, but not everything is built per request:
- n-gram drafters are kept when their request leaves and handed to a later one,
  which then drafts from the earlier requests' text too (suffix memory);
- a drafter model is loaded once per path, its contexts pooled per sequence id;
- Gemma 4 MTP slots share one assistant context per path (`mtp.MTPSlots`).
  Linking an assistant context to the scheduler's spoils KV cells already
  there (measured: a reused prompt prefix then gave other first tokens), so
  a group is linked only while no slot holds cells: at start for the engine's
  own assistant, otherwise the scheduler defers the request (`can_link`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gemma_cli.engine.drafters import Drafter, ModelDrafter
from gemma_cli.engine.llama import Context, Model
from gemma_cli.engine.mtp import MTPSlots, check_pair

if TYPE_CHECKING:  # pragma: no cover
    from gemma_cli.engine.generate import DraftConfig, Engine


class SlotDrafters:
    """Drafters for the slots of one scheduler context `ctx` on `engine`'s model."""

    def __init__(self, engine: "Engine", ctx: Context, n_slots: int, n_ctx: int) -> None:
        self.engine = engine
        self.ctx = ctx
        self.n_slots = n_slots
        self.n_ctx = n_ctx
        self.mtp: dict[str, MTPSlots] = {}  # assistant path -> the context drafting for every MTP slot
        self._models: dict[str, Model] = {}
        self._pooled: dict[tuple[int, str], Drafter] = {}  # (seq, model path) -> a drafter context to reuse
        self._suffix: list[Drafter] = []  # idle n-gram drafters: each remembers the requests it served
        if engine.draft.source == "mtp":  # the model's own assistant: linked now, while the context is empty
            self._mtp_group(str(engine.draft.model_path))

    def check(self, draft: "DraftConfig") -> None:
        """Load what `draft` needs now, so that a bad file fails its own request, not the batch's next step."""
        if draft.source in ("model", "mtp"):
            model = self._model(str(draft.model_path))
            if draft.source == "mtp":
                check_pair(self.engine.target, model)

    def can_link(self, draft: "DraftConfig", cells_in_use: bool) -> bool:
        """Whether a slot drafting with `draft` may be admitted now (an unlinked assistant needs an empty context)."""
        return draft.source != "mtp" or str(draft.model_path) in self.mtp or not cells_in_use

    def get(self, draft: "DraftConfig", seq: int) -> Drafter:
        """A drafter for the slot on sequence `seq`."""
        if draft.source == "ngram" and self._suffix:
            return self._suffix.pop()  # begin() files its previous request's text as memory for this one
        if draft.source == "mtp":
            return self._mtp_group(str(draft.model_path)).drafter(seq)
        if draft.source != "model":
            return self.engine._make_drafter(draft)  # none / n-gram: cheap, stateful per generation
        path = str(draft.model_path)
        key = (seq, path)
        if key not in self._pooled:
            drafter = ModelDrafter(self._model(path), n_ctx=self.n_ctx, n_threads=self.engine.config.n_threads)
            drafter.attach(self.ctx)
            self._pooled[key] = drafter
        return self._pooled[key]

    def release(self, drafter: Drafter, source: str) -> None:
        """A slot left: keep an n-gram drafter for a later request, close one built for this request alone."""
        if source == "ngram":
            self._suffix.append(drafter)
        elif drafter not in self._pooled.values():
            drafter.close()  # pooled drafter contexts and MTP groups close with the scheduler

    def _model(self, path: str) -> Model:
        model = self._models.get(path)
        if model is None:
            cfg = self.engine.config
            model = self._models[path] = Model(path, n_gpu_layers=cfg.n_gpu_layers, cpu_repack=cfg.cpu_repack)
        return model

    def _mtp_group(self, path: str) -> MTPSlots:
        group = self.mtp.get(path)
        if group is None:
            group = self.mtp[path] = MTPSlots(self.engine.target, self._model(path), self.ctx, self.n_slots)
        return group

    def close(self) -> None:
        for d in [*self._pooled.values(), *self._suffix]:
            d.close()
        self._pooled.clear()
        self._suffix.clear()
        for group in self.mtp.values():
            group.close()
        self.mtp.clear()
        for m in self._models.values():
            m.close()
        self._models.clear()
