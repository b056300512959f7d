"""_joins"""
