"""viq.train"""
