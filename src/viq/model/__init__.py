"""viq.model"""
