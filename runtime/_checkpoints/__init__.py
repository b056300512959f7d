"""_checkpoints"""
