"""Rendering: avatar packs and batched face renderers (one step for all sessions on a device)."""
