"""The WaveNet case study (the paper's section 5): a speech model, its corpus and its trainer.

``pbt.wavenet.model`` is the network, ``pbt.wavenet.trainer`` the black-box trainer pbt drives
(``trainer.path: pbt.wavenet.trainer:WaveNetTrainer``), ``pbt.wavenet.corpus`` the corpus: built
from ``sentences`` spoken by ``espeak``, stored as WAV files (``wav``), or any folder of WAVs.
Needs the ``wavenet`` extra (PyTorch, espeakng-loader, SciPy).
"""
