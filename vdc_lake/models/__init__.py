"""Models: birder checkpoints, loading, decoding and batched inference, and birder's result files.

Modules, each one idea (imports go down this list): names (network names without birder),
checkpoints (files, listing, ModelError), options (InferenceOptions), loading (load_model,
preprocessing), decoding (pixels as birder decodes them; nvJPEG), kinds (rotation / descriptor
/ embedding outputs), datasets (DataLoader datasets), passes (one decode, several models:
run_pass), inference (one model: run_inference), embed (files embedded as a set was),
result_files (birder's own result files).
"""
