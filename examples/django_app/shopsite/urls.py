from __future__ import annotations

from django.urls import path
from orders import views

urlpatterns = [
    path("orders/<str:order_id>", views.start_checkout),
    path("workflows/<str:workflow_id>", views.workflow_status),
]
