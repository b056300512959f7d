"""_windows"""
