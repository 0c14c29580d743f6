"""Shared building blocks of the systems' models: backbones/, attention, temporal layers (LSTM, TCN), audio
front-ends as layers, and the model modules the systems build (`affjax.systems` finds a system's builder by
`config.model.name`). Imports no data module."""
