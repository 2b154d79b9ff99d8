"""viq.codes"""
