"""viq.eval"""
