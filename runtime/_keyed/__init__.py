"""_keyed"""
