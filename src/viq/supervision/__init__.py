"""viq.supervision"""
