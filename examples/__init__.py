"""Example tidelog training recipes (`tidelog train --recipe examples.churn:train`)."""
