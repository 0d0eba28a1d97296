"""The erasure core: method configs and the registry, the job that writes an erased pipeline,
and the primitives the methods share (data, saliency, masking, noise, the training loop).
It knows no particular model; the public API is re-exported by `sd_erasure`."""
