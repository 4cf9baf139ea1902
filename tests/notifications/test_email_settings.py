"""Outgoing mail is configured from the environment: EMAIL_URL, or EMAIL_HOST and its
companions; with neither, mail is printed on the console."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.email_settings import CONSOLE_BACKEND, SMTP_BACKEND, email_settings


def test_nothing_set_prints_mail_on_the_console():
    assert email_settings({}) == {"EMAIL_BACKEND": CONSOLE_BACKEND, "EMAIL_TIMEOUT": 10}


@pytest.mark.parametrize(("url", "host", "port", "tls", "ssl"), [
    ("smtp://mail.test", "mail.test", 25, False, False),
    ("smtp://mail.test:2525?tls=true", "mail.test", 2525, True, False),
    ("smtp+tls://mail.test", "mail.test", 587, True, False),
    ("smtps://mail.test", "mail.test", 465, False, True),
    ("smtp://mail.test?ssl=1", "mail.test", 465, False, True),
])
def test_an_email_url_configures_smtp(url, host, port, tls, ssl):
    config = email_settings({"EMAIL_URL": url})
    assert config["EMAIL_BACKEND"] == SMTP_BACKEND
    assert (config["EMAIL_HOST"], config["EMAIL_PORT"]) == (host, port)
    assert (config["EMAIL_USE_TLS"], config["EMAIL_USE_SSL"]) == (tls, ssl)


def test_credentials_in_the_url_are_percent_decoded():
    config = email_settings({"EMAIL_URL": "smtp+tls://apikey:p%40ss%2Fw0rd@smtp.test:587",
                             "EMAIL_TIMEOUT": "5"})
    assert (config["EMAIL_HOST_USER"], config["EMAIL_HOST_PASSWORD"]) == ("apikey",
                                                                          "p@ss/w0rd")
    assert config["EMAIL_TIMEOUT"] == 5


def test_email_host_and_companions_configure_smtp():
    config = email_settings({"EMAIL_HOST": "smtp.test", "EMAIL_PORT": "587",
                             "EMAIL_HOST_USER": "u", "EMAIL_HOST_PASSWORD": "p",
                             "EMAIL_USE_TLS": "true"})
    assert config == {"EMAIL_BACKEND": SMTP_BACKEND, "EMAIL_HOST": "smtp.test",
                      "EMAIL_PORT": 587, "EMAIL_HOST_USER": "u", "EMAIL_HOST_PASSWORD": "p",
                      "EMAIL_USE_TLS": True, "EMAIL_USE_SSL": False, "EMAIL_TIMEOUT": 10}


def test_an_explicit_backend_wins():
    config = email_settings({"EMAIL_URL": "smtp://mail.test",
                             "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend"})
    assert config["EMAIL_BACKEND"] == "django.core.mail.backends.locmem.EmailBackend"


@pytest.mark.parametrize("environ", [
    {"EMAIL_URL": "http://mail.test"},
    {"EMAIL_URL": "smtp://"},
    {"EMAIL_HOST": "smtp.test", "EMAIL_USE_TLS": "1", "EMAIL_USE_SSL": "1"},
])
def test_a_wrong_mail_configuration_stops_the_start(environ):
    with pytest.raises(ImproperlyConfigured):
        email_settings(environ)
