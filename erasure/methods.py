"""The built-in erasure methods: one registration each (see erasure/registry.py).

Adding a method means adding its file beside salun.py (its config dataclass, its
`erase_pipeline`, a docstring saying where every default comes from) and one line here.
"""

from . import advunlearn, concept_ablation, erasediff, esd, forget_me_not, salun, scissorhands, seot, slug, spm, uce
from .registry import register
from .salun_soft import SalUnSoftConfig

DEFAULT_METHOD = "salun"  # what `sd-erase erase`, `sd-erase demo` and `.erase()` use without --method

register("salun", salun.SalUnConfig, "sd_erasure.erasure.salun:erase_pipeline",
         title="SalUn (saliency-masked unlearning)", citation=salun.CITATION)
register("salun-soft", SalUnSoftConfig, "sd_erasure.erasure.salun:erase_pipeline",
         title="SalUn-soft (soft saliency mask)", citation=salun.CITATION)
register("esd", esd.EsdConfig, "sd_erasure.erasure.esd:erase_pipeline",
         title="ESD (erasing concepts by negative guidance)", citation=esd.CITATION)
register("uce", uce.UceConfig, "sd_erasure.erasure.uce:erase_pipeline",
         title="UCE (unified concept editing, closed form)", citation=uce.CITATION)
register("advunlearn", advunlearn.AdvUnlearnConfig, "sd_erasure.erasure.advunlearn:erase_pipeline",
         title="AdvUnlearn (adversarial training of the text encoder)", citation=advunlearn.CITATION)
register("ca", concept_ablation.ConceptAblationConfig, "sd_erasure.erasure.concept_ablation:erase_pipeline",
         title="CA (concept ablation onto an anchor concept)", citation=concept_ablation.CITATION)
register("scissorhands", scissorhands.ScissorHandsConfig, "sd_erasure.erasure.scissorhands:erase_pipeline",
         title="ScissorHands (reset the most connected weights, then repair)", citation=scissorhands.CITATION)
register("fmn", forget_me_not.ForgetMeNotConfig, "sd_erasure.erasure.forget_me_not:erase_pipeline",
         title="FMN (Forget-Me-Not: attention re-steering)", citation=forget_me_not.CITATION)
register("slug", slug.SlugConfig, "sd_erasure.erasure.slug:erase_pipeline",
         title="SLUG (single layer unlearning gradient)", citation=slug.CITATION)
register("erasediff", erasediff.EraseDiffConfig, "sd_erasure.erasure.erasediff:erase_pipeline",
         title="EraseDiff (retain loss with the forget objective as a constraint)", citation=erasediff.CITATION)
register("seot", seot.SeotConfig, "sd_erasure.erasure.seot:erase_pipeline",
         title="SEOT (suppression of the concept's text embeddings at inference)", citation=seot.CITATION)
register("spm", spm.SpmConfig, "sd_erasure.erasure.spm:erase_pipeline",
         title="SPM (a one-dimensional adapter per concept, with latent anchoring)", citation=spm.CITATION)
