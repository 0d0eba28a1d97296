"""UCE: Unified Concept Editing in Diffusion Models (Gandikota et al., WACV 2024). Closed form, no training.

Every cross-attention key and value projection W (attn2.to_k, attn2.to_v) is replaced by the
minimiser of

    Σ_e s_e‖W c_e − W_old c_g(e)‖² + Σ_p s_p‖W c_p − W_old c_p‖² + λ‖W − W_old‖²

so the erased concept's keys and values become its guide's, preserved concepts keep theirs, and
λ keeps the rest of W close. c is the text encoder's output at a concept's last word token (the
authors' current code; `edit_tokens last-word`), or at every position from there to the end,
padding included (their paper-era code, train-scripts/train_erase.py; `to-end`, paired position
by position with the guide's): the end positions matter because the UNet attends to them too, and
a causal text encoder writes the whole prompt into them. The paper-era code also preserves each
preserved caption at *all* its positions, start token included, and preserves the empty prompt
when no preserve set is given; `to-end` does both. The solution is W_new = W_old·M·B⁻¹ with B = λI + Σ_e s_e c_e c_eᵀ +
Σ_p s_p c_p c_pᵀ and M = λI + Σ_e s_e c_g c_eᵀ + Σ_p s_p c_p c_pᵀ: both are the same for every
layer, so one D×D solve (float64, D = 768 for SD 1.x) serves all 32 projections.
Defaults follow the official code: λ = 0.5, scales 1, guide '' (the empty prompt), no preserve set.
"""

from dataclasses import dataclass
from typing import ClassVar, Literal

from .config import EraseConfig, option
from .errors import EraseError, shorten

CITATION = """@inproceedings{gandikota2024unified,
  title     = {Unified Concept Editing in Diffusion Models},
  author    = {Gandikota, Rohit and Orgad, Hadas and Belinkov, Yonatan and Materzy{\'n}ska, Joanna and Bau, David},
  booktitle = {Proceedings of the IEEE/CVF Winter Conference on Applications of Computer Vision},
  year      = {2024}
}"""
UCE = "UCE"


def edited(name: str) -> bool:
    """Whether UCE edits the UNet parameter `name`: the cross-attention key and value projections."""
    return name.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))


@dataclass
class UceConfig(EraseConfig):
    """UCE's settings; each field's help says where its default comes from."""

    STRONGER: ClassVar[str] = "raise `erase_scale` or lower `preserve_scale`, or try `edit_tokens` to-end"
    GENTLER: ClassVar[str] = "add `preserve_concepts`, or raise `preserve_scale`"
    ERASED_FIELDS: ClassVar[tuple[str, ...]] = ("erase_concepts",)  # several concepts: all in one solve
    PAIRED_FIELDS: ClassVar[dict] = {"guide_concepts": ("erase_concepts", "preserve_concepts")}
    KEPT_FIELDS: ClassVar[tuple[str, ...]] = ("preserve_concepts",)

    erase_concepts: list[str] = option(default_factory=list, group=UCE, flag="--erase-concept", metavar="TEXT",
                                       help="concept text to erase (repeatable); default: the model profile's, "
                                            "else the concept itself")
    guide_concepts: list[str] = option(default_factory=list, official=[""], group=UCE, flag="--guide-concept",
                                       metavar="TEXT", help="what an erased concept should become (repeatable: one "
                                                            "for all, or one per erase concept)")
    preserve_concepts: list[str] = option(default_factory=list, group=UCE, flag="--preserve-concept", metavar="TEXT",
                                          help="concept whose keys and values must not change (repeatable; default: "
                                               "the model profile's, else none)")
    erase_scale: float = option(1.0, group=UCE, help="weight of the erase terms")
    preserve_scale: float | None = option(None, official=1.0, group=UCE, help="weight of the preserve terms")
    regularization: float = option(0.5, group=UCE, help="lambda, pull toward the old weights (0 can make the "
                                                        "solve singular)")
    edit_tokens: Literal["last-word", "to-end"] | None = option(
        None, official="last-word", group=UCE,
        help="text positions whose keys/values are edited: the last word token (current official code) or it and "
             "all after it, preserved captions at every position and '' preserved when nothing else is "
             "(paper-era code; needed where the end tokens carry the concept)")

    def check(self) -> None:
        super().check()
        self.require_positive("erase_scale")
        for name in ("preserve_scale", "regularization"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise EraseError(f"`{name}` must be 0 or more, got {getattr(self, name)}")
        if not all(c.strip() for c in self.erase_concepts + self.preserve_concepts):
            raise EraseError("an `erase_concepts` or `preserve_concepts` entry is empty: give its text "
                             "(only a guide may be '')")
        if self.erase_concepts and len(self.guide_concepts) not in (0, 1, len(self.erase_concepts)):
            raise EraseError(f"`guide_concepts` has {len(self.guide_concepts)} entries for {len(self.erase_concepts)} "
                             "`erase_concepts`: give one guide for all, or one per erase concept in the same order")
        both = sorted(set(self.erase_concepts) & set(self.preserve_concepts))
        if both:
            raise EraseError(f"{shorten(both[0])} is both erased and preserved: remove it from `preserve_concepts`")

    def concept_defaults(self) -> dict:
        return {"erase_concepts": [self.concept.strip()]}

    def with_defaults(self, profile: dict):
        config, sources = super().with_defaults(profile)
        if len(config.guide_concepts) == 1:  # one guide for every erased concept
            config.guide_concepts = config.guide_concepts * len(config.erase_concepts)
        return config, sources

    def check_with_pipeline(self, pipeline) -> None:
        from .diffusion import check_prompt_lengths

        check_prompt_lengths(pipeline.tokenizer, self.erase_concepts + self.guide_concepts + self.preserve_concepts,
                             "UCE concept")


Positions = Literal["last-word", "to-end", "all"]


def concept_embeddings(pipeline, texts: list[str], device, positions: Positions) -> dict:
    """Text-encoder outputs (n, D) of each text: at its last word token (the start token for ''),
    from there to the last position, or at every position."""
    import torch

    from .diffusion import encoder_inputs, token_ids, token_states

    unique = list(dict.fromkeys(texts))
    if not unique:
        return {}
    with torch.no_grad():
        hidden = token_states(pipeline, encoder_inputs(pipeline, unique, device))[0].double().cpu()
    input_ids = token_ids(pipeline.tokenizer, unique)
    ends = (input_ids == pipeline.tokenizer.eos_token_id).int().argmax(1)  # the first end token of each row
    last = ends - 1  # the last word token, 0-based (the start token for '')
    start = {"last-word": last, "to-end": last, "all": torch.zeros_like(last)}[positions]
    stop = last + 1 if positions == "last-word" else torch.full_like(last, hidden.shape[1])
    return {text: hidden[i, start[i]:stop[i]] for i, text in enumerate(unique)}


def preserved_texts(config: UceConfig) -> list[str]:
    """The preserve set the edit uses: the paper-era code (`to-end`) preserves '' when none is given."""
    return config.preserve_concepts or ([""] if config.edit_tokens == "to-end" else [])


def edit_matrix(config: UceConfig, embeddings: dict, preserved: dict) -> tuple:
    """K = M·B⁻¹ (float64), so that every edited W becomes W·K; and the condition number of B.
    `embeddings` holds the erase and guide texts', `preserved` the preserve set's."""
    import torch

    dim = next(iter(embeddings.values())).shape[1]
    B = config.regularization * torch.eye(dim, dtype=torch.float64)
    M = B.clone()
    for erase, guide in zip(config.erase_concepts, config.guide_concepts):
        n = min(len(embeddings[erase]), len(embeddings[guide]))  # position by position from the last word
        C, G = embeddings[erase][:n], embeddings[guide][:n]
        B += config.erase_scale * C.T @ C
        M += config.erase_scale * G.T @ C
    for C in preserved.values():
        B += config.preserve_scale * C.T @ C
        M += config.preserve_scale * C.T @ C
    eigenvalues = torch.linalg.eigvalsh(B)
    condition = float(eigenvalues[-1] / eigenvalues[0]) if eigenvalues[0] > 0 else float("inf")
    if condition > 1e10:
        raise EraseError(
            f"UCE's system is singular (condition number {condition:.3g}): with --regularization {config.regularization} "
            f"the {len(config.erase_concepts) + len(preserved)} erase and preserve concepts do not pin "
            f"down all {dim} directions; use a regularization above 0 (official: 0.5)")
    return torch.linalg.solve(B, M.T).T, condition  # B is symmetric: M·B⁻¹ = (B⁻¹·Mᵀ)ᵀ


def erase_pipeline(pipeline, config: UceConfig, session) -> tuple[dict, dict]:
    import torch

    device = session.accelerator.device
    with session.timer.phase("edit"):
        embeddings = concept_embeddings(pipeline, config.erase_concepts + config.guide_concepts, device, config.edit_tokens)
        preserve = preserved_texts(config)
        preserved = concept_embeddings(pipeline, preserve, device, "all" if config.edit_tokens == "to-end" else "last-word")
        K, condition = edit_matrix(config, embeddings, preserved)
        names = [n for n, _ in pipeline.unet.named_parameters() if edited(n)]
        parameters = dict(pipeline.unet.named_parameters())
        with torch.no_grad():
            for name in names:
                weight = parameters[name]
                weight.copy_((weight.double() @ K.to(weight.device)).to(weight.dtype))
    pairs = "; ".join(f"'{e}' → '{g}'" for e, g in zip(config.erase_concepts, config.guide_concepts))
    record = {
        "prompts": {"erase": config.erase_concepts, "guide": config.guide_concepts, "preserve": preserve},
        "edit": {"parameters": names, "condition_number": condition},
        "summary": [
            ["edited weights", f"the {len(names)} cross-attention key and value projections (attn2.to_k, attn2.to_v), "
                               "in closed form; nothing else"],
            ["concepts", f"{pairs}; {len(preserve)} preserved"
                         + (f" ({'; '.join(repr(p) for p in preserve[:10])}{'…' if len(preserve) > 10 else ''})"
                            if preserve else "")],
            ["settings", f"λ = {config.regularization}, erase scale {config.erase_scale}, preserve scale "
                         f"{config.preserve_scale}; concept embeddings at "
                         + ("the last word token" if config.edit_tokens == "last-word" else
                            "every position from the last word token on, preserved captions at every position")],
        ],
    }
    return record, {}
