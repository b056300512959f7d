"""_enrich"""
