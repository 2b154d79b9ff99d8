"""viq.backends"""
