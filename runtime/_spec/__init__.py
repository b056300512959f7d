"""_spec"""
