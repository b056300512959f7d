"""_stats"""
