"""This package's own RecBole model classes, one model a file.

Every public subclass of RecBole's ``AbstractRecommender`` defined in a module of this package is
registered under its class name by :mod:`recbole_ext.registry`; defaults live in
``configs/models/<ClassName>.yaml``.
"""
